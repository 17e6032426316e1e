"""In-process plugins shipped with supervisor-tui, enabled through [inprocess.<name>] settings (hence the name)."""
