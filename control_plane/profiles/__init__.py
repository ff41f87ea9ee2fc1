"""The profile layer: profiles built from signals and stated attributes, published to KV."""
