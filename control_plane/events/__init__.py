"""Floor 3, the event path: storing batches (HTTP or queue), crediting outcomes, the consumer."""
