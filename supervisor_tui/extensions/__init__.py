"""In-process plugins shipped with supervisor-tui, enabled through [extensions.<name>] settings (hence the name)."""
