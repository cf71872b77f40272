"""``bertcls evaluate``."""

import typer


def evaluate() -> None:
    """Not implemented yet."""
    typer.echo("bertcls evaluate: not implemented yet", err=True)
    raise typer.Exit(1)
