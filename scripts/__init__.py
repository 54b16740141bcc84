"""Scripts run from the checkout: ``run.sh``, ``test.sh`` and ``demo_registry.py``.

A package so that tools checking imports see it: it uses ``testbed``, never ``tests``.
"""
