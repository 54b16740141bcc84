"""The ``regscan`` command as a client of a regscan running elsewhere: ``login``,
``scan``, ``stop``, ``jobs``, ``status`` and ``results`` over the HTTP API.

``api`` talks to the server and turns every failure into one line; ``config`` keeps the
login; ``follow`` shows a scan's progress; ``render`` prints results; ``commands`` ties
them to the command line.
"""
