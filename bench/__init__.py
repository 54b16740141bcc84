"""Benchmarks, each a script run from the checkout (``.venv/bin/python bench/NAME.py``).

A package so that tools checking imports see it: it uses ``testbed``, never ``tests``.
"""
