"""Talk to a Registry HTTP API v2 and describe the images in it.

A plain library: no Celery, database or settings; callers pass everything in.
Import names from the module that defines them (``scanner.registry.client``, ...).
"""
