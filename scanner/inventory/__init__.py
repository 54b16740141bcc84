"""The package inventory: what an image holds, read from its layers.

Start at ``analysis``; the other modules are the steps it takes, in order.

- ``analysis``: the entry points, ``analyse_layer`` and ``analyse_image`` (an
  image's layers, several at once, each verified and cached by digest, merged in
  order).
- ``results``: what the reading records (``LayerAnalysis``, ``Inventory``) and its
  ``Limits``.
- ``streams``: a layer blob as a tar stream: gzip (zlib-ng), zstd or plain, bounded,
  decompressed ahead of the reader in a thread of its own.
- ``tar``: the safe tar reader, member by member, handing files to the catalogers.
- ``overlay``: the merge of the layers (whiteouts, opaque directories).
- ``osinfo``: which operating system the image holds.
- ``packages``: ``Package`` and the ``Cataloger`` protocol.
- ``catalogers``: one reader per kind of package file (dpkg, apk, rpm, Python, npm,
  Go, Java).
"""
