"""Shared command-line options, console set-up and settings building."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from bertcls.config.sources import ResolvedConfig, resolve_settings
from bertcls.runtime.logs import NOISY_LIBRARIES, VERBOSITY_LEVELS, attach_file_log
from bertcls.runtime.redaction import RedactingFilter

err_console = Console(stderr=True)
out_console = Console()


def option(*names: str, help: str, **kwargs) -> Any:
    """A ``--dashed-name`` option that also accepts ``--underscore_name`` (use in Annotated, default None)."""
    spellings = []
    for name in names:
        spellings.append(name)
        if name.startswith("--") and "-" in name[2:]:
            spellings.append("--" + name[2:].replace("-", "_"))
    return typer.Option(*spellings, help=help, **kwargs)


OutputRoot = Annotated[
    Optional[str], option("--output-root", help="Folder for models, data splits, caches, logs and results.")
]
ConfigFile = Annotated[
    Optional[str], option("--config", help="YAML config (default: ./config.yml, then <output_root>/config.yml).")
]
Verbosity = Annotated[Optional[int], option("--verbosity", "-v", help="0 warnings only, 1 info and progress, 2 debug.")]
MaxSeqLen = Annotated[Optional[int], option("--max-seq-len", help="Tokens per text; longer texts are truncated.")]
BatchSize = Annotated[Optional[int], option("--batch-size", help="Batch size.")]
DataFile = Annotated[Optional[str], option("--data-file", help="Labelled CSV (text,category).")]
Encoding = Annotated[Optional[str], option("--encoding", help="Text encoding of the CSV files (default utf-8).")]
TextColumn = Annotated[Optional[str], option("--text-column", help="Name of the text column (default text).")]
LabelColumn = Annotated[Optional[str], option("--label-column", help="Name of the label column (default category).")]
MultiLabel = Annotated[
    Optional[bool],
    option("--multi-label/--single-label", help="Texts carry any number of labels (model.task: multilabel)."),
]
LabelSeparator = Annotated[
    Optional[str], option("--label-separator", help="Multi-label: what joins the labels in a label cell (default |).")
]
LabelColumns = Annotated[
    Optional[str],
    option("--label-columns", help="Multi-label: comma-separated 0/1 columns, one per label (instead of one column)."),
]


def task_flags(*, multi_label: bool | None, separator: str | None, columns: str | None) -> dict[str, Any]:
    """The dotted settings of the multi-label options (None where not given)."""
    task = None if multi_label is None else ("multilabel" if multi_label else "multiclass")
    names = None if columns is None else [c.strip() for c in columns.split(",") if c.strip()]
    return {"model.task": task, "data.label_separator": separator, "data.label_columns": names}


BestModel = Annotated[
    Optional[str],
    option(
        "--best-model",
        "--model",
        help="Checkpoint (bare names resolve under <output_root>/best_trials/; default best_model.pt).",
    ),
]
Device = Annotated[Optional[str], option("--device", help="auto, cpu, cuda or mps.")]
Precision = Annotated[
    Optional[str],
    option(
        "--precision",
        help="Encoder precision: auto (bf16 where the CPU or GPU has it natively, else fp32), fp32, bf16 or fp16.",
    ),
]
Threads = Annotated[
    Optional[int],
    option("--threads", help="CPU threads for torch and onnxruntime (default: one per physical core).", min=1),
]


Track = Annotated[
    Optional[list[str]],
    option(
        "--track",
        help="Track the run in mlflow and/or tensorboard (repeat, or comma-separate; none turns tracking off).",
    ),
]
TrackingUri = Annotated[
    Optional[str],
    option(
        "--tracking-uri",
        help="MLflow: http(s)://host:port of a tracking server, a database URL, or a folder (default "
        "<output_root>/mlruns).",
    ),
]
RunName = Annotated[Optional[str], option("--run-name", help="Name of the tracked run (default <command>-<time>).")]


def tracking_flags(track: list[str] | None, uri: str | None, run_name: str | None) -> dict[str, Any]:
    """The dotted settings of the tracking options (None where not given)."""
    backends = None if track is None else ",".join(track)
    return {"tracking.backend": backends, "tracking.uri": uri, "tracking.run_name": run_name}


def print_unseen_labels(console: Console, counts: dict[str, int]) -> None:
    """Name the labels a model never saw, with their counts (they are scored as errors)."""
    if counts:
        listed = ", ".join(f"{label!r} ({count})" for label, count in sorted(counts.items()))
        console.print(f"[yellow]Labels the model never saw (scored as errors):[/] {listed}")


def build_config(config_file: str | None, flags: dict[str, Any]) -> ResolvedConfig:
    """Resolve the settings (flags > environment > YAML > defaults) and apply the process-wide thread count."""
    from bertcls.runtime.precision import apply_threads

    resolved = resolve_settings(flags, config_file)
    apply_threads(resolved.settings.model.num_threads)
    join_torchrun(resolved)
    return resolved


def join_torchrun(resolved: ResolvedConfig) -> None:
    """Under torchrun: join the process group, check every rank resolved the same settings, and keep the console
    and the log files to rank 0. Without torchrun nothing happens."""
    from bertcls.runtime import distributed

    if not distributed.launched():
        return
    from bertcls.model.encoder import pick_device

    here = distributed.init_from_env(pick_device(resolved.settings.model.device).type)
    distributed.check_same_settings(resolved.settings.model_dump(mode="json"))
    if not here.is_main:
        out_console.quiet = err_console.quiet = True


def setup_logging(resolved: ResolvedConfig, command: str) -> Path | None:
    """Console logging at the chosen verbosity (stderr), and a debug log file for the command."""
    settings = resolved.settings
    level = VERBOSITY_LEVELS[settings.verbosity]
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "bertcls-console"]:
        root.removeHandler(handler)
    console = RichHandler(console=err_console, show_path=False, show_time=False, rich_tracebacks=False)
    console.setLevel(level)
    console.set_name("bertcls-console")
    console.addFilter(RedactingFilter())
    root.addHandler(console)
    root.setLevel(logging.WARNING)
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    from bertcls.runtime.distributed import world

    if not world().is_main:  # another rank of a torchrun launch: errors only, no log file of its own
        console.setLevel(logging.ERROR)
        return None
    path = attach_file_log(settings.root, command)
    logging.getLogger("bertcls").debug("Resolved configuration: %s", settings.model_dump(mode="json"))
    logging.getLogger("bertcls").debug("Config file: %s", resolved.config_path)
    return path
