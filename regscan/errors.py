"""The one error the ``regscan`` command prints as a line, without a traceback."""


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""
