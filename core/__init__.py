"""The small shared kernel of dinoserve: image handling, model package format, engines, store."""
