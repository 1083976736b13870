"""The `urbis` command: serve, load, export/restore, sources."""
