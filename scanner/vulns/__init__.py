"""Vulnerability matching: which OSV records concern an image's packages.

- ``osv``: OSV records (schema 1.x): reading, validating and taking them apart.
- ``matching``: an image's packages named as the data names them, matched to records.
- ``versions``: exact version ordering for each ecosystem's version scheme.
"""
