"""Ground floor, distribution: where snapshots go (Workers KV, or local files for `perch edge dev`)."""
