"""Real services, real images and real faults, shared by the tests, the benchmarks and the
demo script. Nothing here imports ``tests``; nothing here is installed with regscan.

- :mod:`testbed.services` starts private ``redis-server`` and ``docker-registry``
  processes on free loopback ports and finds the PostgreSQL the tests should use.
- :mod:`testbed.images` builds OCI and Docker images in memory and pushes them
  through the registry HTTP API.
- :mod:`testbed.proxy` puts a fault-injecting HTTP proxy in front of a server.
- :mod:`testbed.osv_export` serves an OSV export over HTTP, as a data source is served.
"""
