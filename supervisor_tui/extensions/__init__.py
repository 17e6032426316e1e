"""Extensions shipped with supervisor-tui: in-process plugins enabled through [extensions.<name>] settings."""
