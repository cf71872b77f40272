"""``bertcls predict``."""

import typer


def predict() -> None:
    """Not implemented yet."""
    typer.echo("bertcls predict: not implemented yet", err=True)
    raise typer.Exit(1)
