"""``bertcls optimize``."""

import typer


def optimize() -> None:
    """Not implemented yet."""
    typer.echo("bertcls optimize: not implemented yet", err=True)
    raise typer.Exit(1)
