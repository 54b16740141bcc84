"""The scanner: three plain libraries that turn a registry's images into findings.

- ``scanner.registry``: the registry client. Talks to a Registry HTTP API v2 (catalog,
  tags, manifests, blobs, with every digest verified) and resolves a tag or digest to
  one image per platform.
- ``scanner.inventory``: the package inventory. Streams an image's layers, reads the
  package files in them and merges the layers as the final image has them.
- ``scanner.vulns``: vulnerability matching. Reads OSV records and matches an
  inventory's packages against them, as findings in the reference shape.

``scanner.errors`` holds the errors all three raise. The inventory downloads layers
through the registry client; matching works on plain package data and needs
neither. Nothing else of the project is imported but ``core``: no Celery, database
or settings; callers pass everything in. Import names from the module that defines
them (``scanner.registry.client``, ``scanner.inventory.analysis``, ...).
"""
