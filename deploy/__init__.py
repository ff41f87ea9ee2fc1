"""Edge bundles: building them (``bundle``) and keeping them in S3/R2 (``bundle_store``).

Operators run this through ``perch bundle``; the control-plane server never touches bundles.
"""
