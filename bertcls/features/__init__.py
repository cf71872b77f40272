"""Model inputs: the embedding service and its cache, TF-IDF features, and the feature sets of the splits."""
