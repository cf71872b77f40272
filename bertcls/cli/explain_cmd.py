"""``bertcls explain``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bertcls.cli.common import (
    BestModel,
    ConfigFile,
    Encoding,
    OutputRoot,
    Threads,
    Verbosity,
    build_config,
    err_console,
    option,
    out_console,
    setup_logging,
)
from bertcls.cli.common import TextColumn as TextColumnOption
from bertcls.cli.predict_cmd import bare_under, check_target
from bertcls.runtime.layout import RunLayout

if TYPE_CHECKING:
    from bertcls.explain.explainer import Explainer
    from bertcls.explain.outputs import ExplainedText
    from bertcls.explain.run import ChosenRows


def explain(
    output_root: OutputRoot = None,
    best_model: BestModel = None,
    data_file: Annotated[Optional[str], option("--data-file", help="CSV whose texts to explain.")] = None,
    text: Annotated[Optional[str], option("--text", help="Explain this one text instead of a file.")] = None,
    rows: Annotated[
        Optional[str], option("--rows", help="CSV line numbers to explain, e.g. 3,17,42 (the header is line 1).")
    ] = None,
    limit: Annotated[
        Optional[int], option("--limit", help="Explain the first N texts of the file (default 20).", min=1)
    ] = None,
    label: Annotated[
        Optional[str], option("--label", help="Explain this label (default: the predicted label, or labels).")
    ] = None,
    output_file: Annotated[
        Optional[str],
        option(
            "--output-file",
            help="CSV of the explanations (bare names go under <output_root>/explanations/); the page is written "
            "beside it as .html.",
        ),
    ] = None,
    steps: Annotated[
        Optional[int],
        option(
            "--steps",
            help="Integrated-gradients steps per path to start with (default 8; doubled up to explain.max_steps, "
            "64, while a label's completeness gap is over 5%).",
            min=2,
        ),
    ] = None,
    method: Annotated[
        Optional[str],
        option(
            "--method",
            help="The paths integrated gradients take: expected (each word piece faded in from a few random partial "
            "removals of the words, averaged; the default, the most faithful in the benchmark), presence (from all "
            "words removed) or embeddings (each word piece's embedding from [PAD]).",
        ),
    ] = None,
    max_steps: Annotated[
        Optional[int], option("--max-steps", help="The most steps per path the doubling may reach (default 64).", min=2)
    ] = None,
    baselines: Annotated[
        Optional[int],
        option("--baselines", help="expected: random partial removals per text (default 4).", min=1, max=64),
    ] = None,
    seed: Annotated[
        Optional[int], option("--seed", help="expected: the random removals' seed (default 0).", min=0)
    ] = None,
    text_column: TextColumnOption = None,
    encoding: Encoding = None,
    threads: Threads = None,
    config: ConfigFile = None,
    verbosity: Verbosity = None,
) -> None:
    """Which words made the model decide: exact TF-IDF contributions plus integrated gradients through the encoder,
    as a CSV and a page with the words highlighted."""
    from bertcls.data.labelled import check_regular_file, resolve_data_path
    from bertcls.explain.explainer import Explainer, label_index
    from bertcls.explain.outputs import ExplainedText
    from bertcls.explain.run import RowsRequest, load_explained_checkpoint, parse_rows, read_rows, write_outputs
    from bertcls.model.classifier import Classifier
    from bertcls.runtime.errors import DataError

    resolved = build_config(
        config,
        {
            "output_root": output_root,
            "verbosity": verbosity,
            "data.text_column": text_column,
            "data.encoding": encoding,
            "model.num_threads": threads,
            "explain.steps": steps,
            "explain.method": method,
            "explain.max_steps": max_steps,
            "explain.baselines": baselines,
            "explain.seed": seed,
            "explain.limit": limit,
            "explain.label": label,
            "explain.output_file": output_file,
        },
    )
    settings, cfg = resolved.settings, resolved.settings.explain
    setup_logging(resolved, "explain")
    if (data_file is None) == (text is None):
        raise DataError("Give either --data-file FILE or --text TEXT to explain (one of them).")
    if text is not None and (rows is not None or limit is not None):
        raise DataError("--rows and --limit choose rows of --data-file; they do not apply to --text.")
    if rows is not None and limit is not None:
        raise DataError("Give --rows or --limit, not both.")
    if text is not None and not text.strip():
        raise DataError("The text to explain is empty; give a text with words.")
    row_numbers = parse_rows(rows)
    target = bare_under(cfg.output_file, RunLayout(settings.root).explanations_dir)
    if target.suffix.lower() != ".csv":
        raise DataError(f"--output-file {target} should end in .csv (the page is written beside it as .html).")
    check_target(str(target))
    check_target(str(target.with_suffix(".html")))
    source = None
    if data_file is not None:
        source = resolve_data_path(data_file, settings.root)
        check_regular_file(source, "Data file")
    ckpt = load_explained_checkpoint(best_model, settings.root)
    if cfg.label is not None:
        label_index(cfg.label, ckpt.labels)  # before the encoder is loaded
    trained = ckpt.trained_settings(settings.root).data
    data = trained.model_copy(
        update={
            "text_column": settings.data.text_column if text_column else trained.text_column,
            "encoding": settings.data.encoding,
        }
    )
    chosen = None if source is None else read_rows(RowsRequest(source, row_numbers, cfg.limit), data)
    explainer = Explainer.configured(Classifier.load(ckpt, settings.root), cfg)
    if chosen is None:
        assert text is not None
        entries = [ExplainedText(explainer.explain(text, cfg.label))]
    else:
        entries = run_with_progress(explainer, chosen, cfg.label, settings.verbosity)
    csv_path, page = write_outputs(entries, target, ckpt.path.name, explainer.classifier.task.score_meaning)
    render(entries)
    out_console.print(f"Wrote {csv_path}\nWrote {page} (open it in a browser)", highlight=False)


def run_with_progress(explainer: Explainer, rows: ChosenRows, label: str | None, verbosity: int) -> list[ExplainedText]:
    from bertcls.explain.run import explain_rows

    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]Explaining"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=verbosity < 1,
    )
    with progress:
        task = progress.add_task("explain", total=len(rows.texts))
        return explain_rows(explainer, rows, label, lambda n: progress.update(task, advance=n))


def render(entries: list[ExplainedText]) -> None:
    from bertcls.explain.outputs import top_words

    table = Table(title="Explanations (scores in logits; + raises the label, - lowers it)")
    for column in ("row", "label", "prob.", "lexical/semantic", "for", "against", "gap"):
        table.add_column(column)
    for entry in entries:
        for item in entry.explanation.explained:
            positive, negative = top_words(entry.explanation, item, 3)
            flag = " [red](!)[/]" if item.flagged else ""
            table.add_row(
                "" if entry.source_row is None else str(entry.source_row),
                item.label,
                f"{item.probability:.3f}",
                f"{item.lexical_total:+.2f} / {item.semantic_total:+.2f}",
                positive,
                negative,
                f"{item.gap:.1%}{flag}",
            )
    out_console.print(table)
