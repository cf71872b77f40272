"""Evaluation: metrics, cross-validation, error analysis, plots and an HTML report."""
