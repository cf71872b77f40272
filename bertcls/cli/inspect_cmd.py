"""``bertcls inspect``."""

import typer


def inspect() -> None:
    """Not implemented yet."""
    typer.echo("bertcls inspect: not implemented yet", err=True)
    raise typer.Exit(1)
