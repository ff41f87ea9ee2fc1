"""Floor 2, storage: the store, its schema and migrations, the statistics, bulk statements, privacy."""
