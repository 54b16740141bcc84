"""The registry client: talk to a Registry HTTP API v2 and describe the images in it.

- ``client``: ``RegistryClient``, one registry's endpoints (catalog, tags, manifests,
  blobs), with every digest verified and every status mapped to a ``ScanError``.
- ``transport``: retries with backoff, bodies read under a cap, failures in words.
- ``manifests``: the manifest media types, ``Manifest`` and ``ManifestRef``, digests.
- ``blobs``: the verified streaming reader of a layer blob.
- ``auth``: the Docker token flow and HTTP Basic, as a ``requests`` auth.
- ``images``: resolve a tag or digest to one ``PlatformImage`` per platform.
"""
