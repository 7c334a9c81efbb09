"""Refresh: re-embed the served collections with a new model version, the job, the versions."""
