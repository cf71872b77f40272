"""``bertcls suggest``."""

from __future__ import annotations

from typing import Annotated, Optional

from rich.table import Table

from bertcls.cli.common import (
    BestModel,
    ConfigFile,
    Device,
    Encoding,
    OutputRoot,
    Precision,
    Threads,
    Verbosity,
    build_config,
    option,
    out_console,
    setup_logging,
)
from bertcls.cli.predict_cmd import bare_under, check_target
from bertcls.runtime.layout import RunLayout


def suggest(
    output_root: OutputRoot = None,
    best_model: BestModel = None,
    pool_file: Annotated[Optional[str], option("--pool-file", help="CSV of unlabelled texts to choose from.")] = None,
    n: Annotated[Optional[int], option("--n", help="How many texts to suggest (default 50).", min=1)] = None,
    strategy: Annotated[
        Optional[str], option("--strategy", help="diverse (default), uncertainty, margin, entropy or activelab.")
    ] = None,
    exclude_file: Annotated[
        Optional[str], option("--exclude-file", help="CSV of texts already sent out for labelling: never suggested.")
    ] = None,
    output_file: Annotated[
        Optional[str], option("--output-file", help="Where to write (bare names go under <output_root>/suggestions/).")
    ] = None,
    encoding: Encoding = None,
    device: Device = None,
    precision: Precision = None,
    threads: Threads = None,
    config: ConfigFile = None,
    verbosity: Verbosity = None,
) -> None:
    """Which unlabelled texts to label next: the pool scored by the model, the most informative first, spread over
    the embedding space; writes a CSV with an empty label column to fill and append to the training data."""
    from bertcls.data.labelled import check_regular_file, resolve_data_path
    from bertcls.model.checkpoint import load_named_checkpoint
    from bertcls.runtime.errors import DataError
    from bertcls.runtime.fileio import write_csv_atomic
    from bertcls.runtime.formulas import escape_table
    from bertcls.suggest.run import SuggestRequest
    from bertcls.suggest.run import suggest as run_suggest

    resolved = build_config(
        config,
        {
            "output_root": output_root,
            "verbosity": verbosity,
            "data.encoding": encoding,
            "model.device": device,
            "model.precision": precision,
            "model.num_threads": threads,
            "suggest.n": n,
            "suggest.strategy": strategy,
            "suggest.output_file": output_file,
        },
    )
    settings, cfg = resolved.settings, resolved.settings.suggest
    setup_logging(resolved, "suggest")
    if not pool_file:
        raise DataError("No pool given; pass --pool-file FILE (a CSV of unlabelled texts).")
    pool = resolve_data_path(pool_file, settings.root)
    check_regular_file(pool, "Pool file")
    excluded = None
    if exclude_file:
        excluded = resolve_data_path(exclude_file, settings.root)
        check_regular_file(excluded, "Exclude file")
    target = bare_under(cfg.output_file, RunLayout(settings.root).suggestions_dir)
    check_target(str(target))
    if target.resolve() == pool.resolve():
        raise DataError(f"--output-file {target} is the pool file; write the suggestions to another file.")
    ckpt = load_named_checkpoint(best_model, settings.root)
    outcome = run_suggest(ckpt, settings, SuggestRequest(pool, cfg.n, cfg.strategy, excluded, cfg.seed))
    write_csv_atomic(target, escape_table(outcome.frame))
    table = Table(title=f"Suggestions ({cfg.strategy})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in (
        ("pool rows", outcome.pool_rows),
        ("empty texts", outcome.empty),
        ("already labelled (the model's data)", outcome.labelled),
        ("already sent (--exclude-file)", outcome.sent),
        ("near-copies of training texts, skipped", outcome.near_duplicates),
        ("suggested", len(outcome.frame)),
    ):
        table.add_row(name, f"{value:,}")
    out_console.print(table)
    out_console.print(
        f"Wrote {target}: fill its empty label column, append the rows to your training data and train again.",
        highlight=False,
    )
