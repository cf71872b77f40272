"""Labelled CSV data: reading, checks, conflicts, splits; label sets; how messages name CSV lines."""
