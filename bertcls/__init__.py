"""bertcls: turn a CSV of labelled texts into a tuned, evaluated BERT-style text classifier."""

__version__ = "0.1.0"
