"""``MODEL_CARD.md`` in the Hugging Face model-card layout, generated from a checkpoint's metadata and, when the
same checkpoint was evaluated, ``evaluation_results/summary.json``. Nothing in it is written by hand."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import yaml

from bertcls.evaluation.summary import EvaluationSummary
from bertcls.model.checkpoint import CheckpointMeta
from bertcls.model.encoder import BUNDLED_ALIASES
from bertcls.runtime.fileio import write_text_atomic
from bertcls.runtime.layout import RunLayout
from bertcls.runtime.redaction import redact

logger = logging.getLogger(__name__)
ISO_CODES = {"English": "en", "German": "de", "French": "fr", "Spanish": "es", "Portuguese": "pt", "Italian": "it",
             "Dutch": "nl"}  # fmt: skip
METRIC_TYPES = {"f1": "f1", "macro_f1": "f1", "accuracy": "accuracy", "micro_f1": "f1", "samples_f1": "f1"}


def table(rows: Sequence[Sequence[str]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def base_model(meta: CheckpointMeta) -> str:
    name = meta.architecture.encoder.name_or_path
    return "sentence-transformers/all-MiniLM-L6-v2" if name.lower() in BUNDLED_ALIASES else name


def front_matter(meta: CheckpointMeta, name: str, evaluation: EvaluationSummary | None) -> str:
    languages = [ISO_CODES[k] for k, share in meta.data.languages.items() if k in ISO_CODES and share >= 0.05]
    metrics = [
        {"type": METRIC_TYPES[k], "value": round(v, 4), "name": f"{k} (test split)"}
        for k, v in meta.metrics.get("test", {}).items()
        if k in METRIC_TYPES
    ]
    if evaluation is not None:
        metrics += [
            {"type": METRIC_TYPES[k], "value": round(v, 4), "name": f"{k} ({evaluation.cv_folds}-fold CV mean)"}
            for k, v in evaluation.cv_mean.items()
            if k in METRIC_TYPES
        ]
    card = {
        "library_name": "bertcls",
        "pipeline_tag": "text-classification",
        "language": languages or None,
        "base_model": base_model(meta),
        "tags": ["bertcls", "text-classification", meta.settings.get("model", {}).get("task", "multiclass")],
        "model-index": [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "text-classification", "name": "Text Classification"},
                        "dataset": {"name": name, "type": "csv", "split": "test"},
                        "metrics": metrics,
                    }
                ],
            }
        ],
    }
    return "---\n" + yaml.safe_dump({k: v for k, v in card.items() if v is not None}, sort_keys=False) + "---\n"


def what_it_is(meta: CheckpointMeta) -> str:
    arch, task = meta.architecture, meta.settings.get("model", {}).get("task", "multiclass")
    encoder, head = arch.encoder, arch.head
    reading = (
        f"texts longer than {encoder.max_seq_len} tokens are read as up to {encoder.max_chunks} windows "
        f"({encoder.chunk_pooling} of the window embeddings)"
        if encoder.long_texts == "chunks"
        else f"texts are truncated at {encoder.max_seq_len} tokens"
    )
    lexical = (
        f"plus {arch.lexical.num_features:,} TF-IDF n-gram features (word n-grams {tuple(arch.lexical.word_ngrams)})"
        if arch.lexical is not None
        else "without lexical features"
    )
    kind = "fine-tuned" if encoder.fine_tuned else "frozen"
    shape = "a linear head"
    if head.hidden_dims:
        shape = f"an MLP head (hidden layers {head.hidden_dims}, {head.activation})"
    return "\n".join(
        [
            "## Model description",
            "",
            f"A {'multi-label' if task == 'multilabel' else 'single-label'} text classifier made by bertcls: a "
            f"{kind} `{base_model(meta)}` encoder ({encoder.num_layers} layers, {encoder.dim}-dimensional "
            f"{encoder.pooling}-pooled sentence embeddings) and {shape}, {lexical}; {reading}.",
            "",
            f"- Labels ({len(meta.labels)}): {', '.join(f'`{label}`' for label in meta.labels)}",
            f"- Parameters: {', '.join(f'{k} {v:,}' for k, v in meta.parameters.items())}",
            f"- Encoder fingerprint: `{encoder.fingerprint}`",
            f"- Made: {meta.created_at}",
        ]
    )


def training_data(meta: CheckpointMeta) -> str:
    data = meta.data
    settings = meta.settings.get("data", {})
    source = settings.get("data_file") or settings.get("train_file") or "unknown"
    lines = ["## Training data", "", f"From `{Path(str(source)).name}`."]
    if data.rows:
        lines.append("Rows: " + ", ".join(f"{split} {count:,}" for split, count in data.rows.items()) + ".")
    lines.append(f"Rows left out by `--exclude-rows`: {data.excluded_rows}; dropped as bad rows: {data.dropped_rows}.")
    if data.label_counts:
        total = sum(data.label_counts.values()) or 1
        rows = [(label, f"{count:,}", f"{count / total:.1%}") for label, count in data.label_counts.items()]
        lines += ["", "Training texts per label:", "", table(rows, ("label", "texts", "share"))]
    if data.fingerprint:
        lines += ["", "Fingerprints (texts and labels of each split, in order):", ""]
        lines += [f"- {split}: `{fp}`" for split, fp in data.fingerprint.items()]
    if data.warnings:
        lines += ["", "Data warnings at training time:", ""] + [f"- {w}" for w in data.warnings]
    return "\n".join(lines)


def training_procedure(meta: CheckpointMeta) -> str:
    model, optimizer = meta.settings.get("model", {}), meta.settings.get("optimizer", {})
    last = meta.history[-1] if meta.history else None
    lines = [
        "## Training procedure",
        "",
        f"- Epochs: {len(meta.history)} (best {meta.best_epoch}); stopped: {meta.stop_reason or 'unknown'}",
        f"- Optimizer: {optimizer.get('optimizer_choice')}, head learning rate "
        f"{optimizer.get('lr') or 'the task default'}, "
        f"weight decay {optimizer.get('weight_decay')}; batch size {last.batch_size if last else 'n/a'}",
        f"- Monitored metric: {model.get('metric')}; seed {model.get('seed')}",
    ]
    if meta.precision is not None:
        lines.append(f"- Encoder precision: {meta.precision.used} (asked for {meta.precision.requested})")
    if meta.tuning is not None:
        tuning = meta.tuning
        member = f"trial {tuning.trial}" if tuning.trial is not None else f"PBT member {tuning.member}"
        params = ", ".join(f"{k}={v}" for k, v in tuning.params.items())
        lines.append(f"- Tuned: study `{tuning.study}` ({tuning.strategy}), {member}: {params}")
    if meta.tracking is not None:
        lines.append(f"- Tracked: {redact(meta.tracking.describe())}")
    return "\n".join(lines)


def results(meta: CheckpointMeta, evaluation: EvaluationSummary | None) -> str:
    names = sorted({k for split in meta.metrics.values() for k in split})
    rows = [(split, *(f"{values.get(k, float('nan')):.4f}" for k in names)) for split, values in meta.metrics.items()]
    lines = ["## Evaluation results", "", "At training time, with the calibrated decision rule:", ""]
    lines.append(table(rows, ("split", *names)))
    calibration = meta.calibration
    if calibration is not None and calibration.method != "none":
        before, after = calibration.val_ece_before, calibration.val_ece_after
        ece = f"; validation ECE {before:.4f} -> {after:.4f}" if before is not None and after is not None else ""
        lines += ["", f"Calibration: {calibration.method}, temperature {calibration.temperature:.3f}{ece}."]
    if evaluation is None:
        lines += ["", "Not evaluated yet: `bertcls evaluate` adds cross-validation and the abstention threshold here."]
        return "\n".join(lines)
    lines += ["", f"`bertcls evaluate` ({evaluation.evaluated_at}, {evaluation.rows:,} rows):", ""]
    lines.append(table([(k, f"{v:.4f}") for k, v in evaluation.metrics.items()], ("metric", "value")))
    if evaluation.ece is not None:
        lines += ["", f"Expected calibration error: {evaluation.ece:.4f}."]
    if evaluation.cv_folds:
        cv = [(k, f"{v:.4f} ± {evaluation.cv_std.get(k, 0.0):.4f}") for k, v in evaluation.cv_mean.items()]
        lines += ["", f"{evaluation.cv_folds}-fold cross-validation of the same configuration:", ""]
        lines.append(table(cv, ("metric", "mean ± std")))
    if evaluation.target_accuracy is not None:
        if evaluation.abstain_below is not None and evaluation.coverage is not None:
            lines += ["", f"Abstention: answering only at confidence >= {evaluation.abstain_below:.3f} keeps "
                      f"{evaluation.coverage:.1%} of texts at accuracy {evaluation.accuracy_kept:.4f} (target "
                      f"{evaluation.target_accuracy})."]  # fmt: skip
        else:
            lines += ["", f"No confidence threshold reaches the target accuracy {evaluation.target_accuracy}."]
    return "\n".join(lines)


def how_to_use(name: str) -> str:
    return "\n".join(
        [
            "## How to use",
            "",
            "```bash",
            f"bertcls predict --output-root {name} --data-file new_texts.csv --output-file predictions.csv",
            f"bertcls serve --output-root {name}   # POST /v1/predict on http://127.0.0.1:8000",
            f'bertcls explain --output-root {name} --text "a text to explain"',
            "```",
        ]
    )


def limits(meta: CheckpointMeta) -> str:
    encoder, data = meta.architecture.encoder, meta.data
    lines = ["## Limitations", "", f"- Reads at most {encoder.max_seq_len} tokens per text (window)."]
    if data.truncation:
        fraction = data.truncation.get("fraction")
        if fraction is not None:
            lines.append(f"- {fraction:.1%} of the texts of its train, val and test splits were longer than that.")
    if data.languages:
        main = [f"{k} {v:.0%}" for k, v in data.languages.items() if v >= 0.01]
        lines.append(
            f"- Languages seen in training (estimated from function words): {', '.join(main)}; texts in other "
            "languages were not seen."
        )
    lines.append(f"- Labels outside the {len(meta.labels)} above are never predicted.")
    return "\n".join(lines)


def render_card(meta: CheckpointMeta, name: str, evaluation: EvaluationSummary | None = None) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in meta.versions.items())
    sections = [
        front_matter(meta, name, evaluation),
        f"# {name}",
        what_it_is(meta),
        "## Intended uses & limitations\n\nClassifies texts like the training data into the labels below; see "
        "Limitations for what it has not seen.",
        how_to_use(name),
        training_data(meta),
        training_procedure(meta),
        results(meta, evaluation),
        limits(meta),
        f"## Framework versions\n\n{versions}",
        "_Generated by bertcls from the checkpoint and its evaluation; regenerated by train, evaluate and export._",
    ]
    return "\n\n".join(sections) + "\n"


def write_model_card(
    target: Path, meta: CheckpointMeta, name: str, evaluation: EvaluationSummary | None = None
) -> Path:
    """Write ``target`` (a MODEL_CARD.md) atomically."""
    path = write_text_atomic(target, render_card(meta, name, evaluation))
    logger.info("Wrote the model card %s", path)
    return path


def write_card_with_evaluation(target: Path, meta: CheckpointMeta, checkpoint: Path, root: Path) -> Path:
    """A card for ``checkpoint`` (e.g. beside its export), with ``evaluation_results/summary.json`` when that
    evaluated this same checkpoint."""
    from bertcls.evaluation.summary import read_summary

    summary = read_summary(RunLayout(root).evaluation_dir)
    if summary is not None and not summary.describes(checkpoint, meta.created_at):
        summary = None
    return write_model_card(target, meta, Path(root).absolute().name, summary)
