"""Modal screens of the dashboard: kill confirmation and help."""
