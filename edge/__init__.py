"""The Cloudflare Python Worker: identify, decide with ``core``, render, log.

Imports ``core`` only; built out by the edge issue.
"""
