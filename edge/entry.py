"""The Worker's entry module (``main`` in wrangler.toml): nothing but the class."""

from edge.worker import Default

__all__ = ["Default"]
