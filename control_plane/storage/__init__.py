"""Floor 2, storage: database, snapshots and store, schema and migrations, statistics, privacy."""
