"""Study results: trials.csv, plots, the PBT lineage, and the best model in the shared checkpoint format."""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from pathlib import Path

import optuna

from bertcls.runtime.errors import BertclsError
from bertcls.runtime.fileio import atomic_path, write_csv_atomic, write_text_atomic
from bertcls.runtime.layout import RunLayout
from bertcls.tuning.study import finished_trials

logger = logging.getLogger(__name__)


def write_trials_csv(study: optuna.Study, folder: Path) -> Path:
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))
    return write_csv_atomic(folder / "trials.csv", frame)


def _save_axes(axes, path: Path) -> Path:
    from bertcls.evaluation.plots import save_figure

    return save_figure(axes.figure if hasattr(axes, "figure") else axes.flat[0].figure, path)


def write_study_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimization history and parameter importances (skipped, with a note, when there is too little data)."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*(too small to compute importances|quantiles select the same).*")
        for name, draw in (
            ("optimization_history.png", optuna_plots.plot_optimization_history),
            ("param_importances.png", optuna_plots.plot_param_importances),
        ):
            try:
                written.append(_save_axes(draw(study), folder / name))
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                logger.info("Skipped %s: %s", name, exc)
    return written


def write_pbt_results(members, lineage: list[dict], folder: Path) -> list[Path]:
    """pbt_lineage.json and a plot of each member's metric and learning rate over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_text_atomic(folder / "pbt_lineage.json", json.dumps(lineage, indent=2))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    knob = "lr" if all(c.get("lr") is not None for m in members for c in m.curve) else "linear_l2"
    for member in members:
        epochs = [c["epoch"] for c in member.curve]
        top.plot(epochs, [c["metric"] for c in member.curve], marker="o", label=f"member {member.index}")
        bottom.plot(epochs, [c.get(knob) for c in member.curve], marker="o")
    for event in lineage:
        if event["action"] == "exploit":
            top.axvline(event["epoch"], color="gray", alpha=0.3, linestyle="--")
    top.set_ylabel("validation metric")
    top.legend()
    top.set_title("PBT population (dashed: an exploit)")
    bottom.set_ylabel("learning rate" if knob == "lr" else "L2 strength (linear head)")
    bottom.set_yscale("log")
    bottom.set_xlabel("epoch")
    fig.tight_layout()
    from bertcls.evaluation.plots import save_figure

    return [folder / "pbt_lineage.json", save_figure(fig, folder / "pbt_members.png")]


def best_local_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best complete trial whose checkpoint is on this machine (another worker's may live elsewhere)."""
    complete = [
        t for t in finished_trials(study) if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
    ]
    if not complete:
        raise BertclsError(f"Study {study.study_name!r} has no completed trial yet; run more trials (--n-trials).")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(complete, key=lambda t: float(t.value or 0.0), reverse=maximize)
    for trial in ranked:
        if Path(trial.user_attrs.get("checkpoint", "")).is_file():
            if trial.number != ranked[0].number:
                logger.warning(
                    "The best trial (%d) was run by another worker; its checkpoint is %s there. Using trial %d.",
                    ranked[0].number,
                    ranked[0].user_attrs.get("checkpoint"),
                    trial.number,
                )
            return trial
    raise BertclsError("No completed trial of this study has its checkpoint on this machine.")


def next_experiment_path(layout: RunLayout, study_name: str) -> Path:
    """best_model_<study>_exp<N>.pt, N counting the earlier exports of that study name."""
    pattern = re.compile(rf"best_model_{re.escape(study_name)}_exp(\d+)\.pt$")
    found = layout.best_dir.glob(f"best_model_{study_name}_exp*.pt")
    taken = [int(m.group(1)) for p in found if (m := pattern.match(p.name))]
    return layout.study_best_model(study_name, max(taken) + 1 if taken else 0)


def export_best(checkpoint: Path, output_root: Path, study_name: str) -> tuple[Path, Path]:
    """Copy the best checkpoint to best_trials/best_model_<study>_exp<N>.pt and best_trials/best_model.pt."""
    layout = RunLayout(output_root)
    layout.best_dir.mkdir(parents=True, exist_ok=True)
    exp_path = next_experiment_path(layout, study_name)
    for target in (exp_path, layout.best_model):
        with atomic_path(target) as tmp:
            shutil.copyfile(checkpoint, tmp)
    return exp_path, layout.best_model
