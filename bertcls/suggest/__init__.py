"""Active learning: which unlabelled texts to label next (``bertcls suggest``)."""
