"""The `regscan` command and its settings."""
