"""Discovery: near-duplicate groups and k-means clusters of a collection, and their stored
results."""
