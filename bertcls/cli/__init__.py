"""The command layer: parse flags, build settings, call the core, render with rich."""
