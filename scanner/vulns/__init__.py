"""Vulnerability matching: which OSV records concern an image's packages.

Start at ``matching``; it names the image's packages as the data names them and
hands each record to the other modules.

- ``osv``: OSV records (schema 1.x): reading, validating and taking them apart.
- ``matching``: an image's packages as lookups (``Target``), and ``match``.
- ``ranges``: whether a version is in an OSV range, and what fixes it.
- ``findings``: records that name each other as one vulnerability, and the finding
  in the reference shape (score, severity, status, risk factors).
- ``versions``: exact version ordering for each ecosystem's version scheme.
"""
