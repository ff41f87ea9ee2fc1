"""The ``perch`` command line: composes the core, edge and control plane.

This is the application's composition root, the one place allowed to import
every layer; no library module imports it.
"""
