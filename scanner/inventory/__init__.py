"""The package inventory: what an image holds, read from its layers.

- ``analysis``: the entry points, ``analyse_layer`` and ``analyse_image``.
- ``osinfo``: which operating system an image holds.
- ``packages``: ``Package`` and the ``Cataloger`` protocol.
- ``catalogers``: one reader per kind of package file (dpkg, apk, rpm, Python, npm,
  Go, Java).
"""
