"""``bertcls config validate``."""

from __future__ import annotations

from rich.table import Table

from bertcls.cli.common import ConfigFile, OutputRoot, build_config, out_console
from bertcls.runtime.redaction import redact

config_app = __import__("typer").Typer(help="Check and show the configuration.", no_args_is_help=True)

SOURCE_STYLES = {"flag": "bold green", "env": "bold yellow", "yaml": "cyan", "default": "dim"}


@config_app.command("validate")
def validate(config: ConfigFile = None, output_root: OutputRoot = None) -> None:
    """Resolve the configuration and show each value with its source (flag / env / yaml / default)."""
    resolved = build_config(config, {"output_root": output_root})
    table = Table(title=f"Configuration ({resolved.config_path or 'no config file'})")
    table.add_column("setting")
    table.add_column("value", overflow="fold")
    table.add_column("source")
    for key, value, source in resolved.rows():
        table.add_row(key, redact(str(value)), f"[{SOURCE_STYLES[source]}]{source}[/]")
    out_console.print(table)
    out_console.print("[green]Configuration is valid.[/]")
