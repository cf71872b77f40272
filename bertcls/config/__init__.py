"""Typed settings (``settings``) and where they come from: flags > environment > YAML > defaults (``sources``)."""
