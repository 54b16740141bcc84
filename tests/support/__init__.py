"""Real services, real images and real faults for the tests of regscan.

- :mod:`tests.support.services` starts private ``redis-server`` and ``docker-registry``
  processes on free loopback ports and finds the PostgreSQL the tests should use.
- :mod:`tests.support.images` builds OCI and Docker images in memory and pushes them
  through the registry HTTP API.
- :mod:`tests.support.proxy` puts a fault-injecting HTTP proxy in front of a server.
"""
