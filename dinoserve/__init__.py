"""The `dinoserve` command line."""
