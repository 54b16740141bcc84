"""The API's endpoints, one module per group of routes. A route module imports the
shared pieces (``api.deps``, ``api.schemas``, ``api.views``), never another route module."""
