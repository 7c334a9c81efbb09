"""Embeds image collections with a model package and writes them into Qdrant."""
