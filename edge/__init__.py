"""The Cloudflare Python Worker: identify, decide with ``core``, render, log.

Of this repository's packages it imports ``core`` only, so a bundle carries nothing else.
"""
