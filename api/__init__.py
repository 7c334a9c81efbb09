"""The FastAPI service: embed, classify, search, attention, health and metrics."""
