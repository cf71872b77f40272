"""TensorBoard: one event folder per run under ``tracking.tensorboard_dir`` (default ``<output_root>/tensorboard``),
written with TensorBoard's own event writer (scalars as float64 tensors, text as markdown); no torch needed."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from bertcls.config.settings import TrackingSection
from bertcls.runtime.layout import RunLayout
from bertcls.tracking.records import RunSpec, TrackingRecord


def markdown_table(values: dict[str, str]) -> str:
    rows = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in values.items())
    return f"| name | value |\n|---|---|\n{rows}"


def run_folder(base: Path, name: str, *, shared: bool) -> Path:
    """``base/name`` with the name kept to one folder level; a run of its own never shares a folder with an earlier
    run (``name-2``, ``name-3``, ...), a shared run (a study's) always does."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".") or "run"
    folder = base / safe
    count = 1
    while not shared and folder.exists():
        count += 1
        folder = base / f"{safe}-{count}"
    return folder


class EventWriter:
    """Scalars and texts into one run folder's event file."""

    def __init__(self, folder: str):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.file = EventFileWriter(folder)

    def _add(self, value: Any, step: int) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self.file.add_event(
            event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value]))
        )

    def scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.plugins.scalar import metadata

        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_DOUBLE, double_val=[value], tensor_shape=tensor_shape_pb2.TensorShapeProto()
        )
        meta = metadata.create_summary_metadata(display_name=tag, description="")
        self._add(summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta), step)

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.plugins.text import metadata

        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[markdown.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]),
        )
        meta = metadata.create_summary_metadata(display_name=tag, description="")
        self._add(summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta), step)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardBackend:
    name = "TensorBoard"

    def __init__(self, cfg: TrackingSection, root: Path):
        self.base = Path(cfg.tensorboard_dir or RunLayout(root).tensorboard_dir).absolute()
        self._writers: dict[str, EventWriter] = {}
        self._attached: set[str] = set()

    @property
    def where(self) -> str:
        return str(self.base)

    def start(self, spec: RunSpec, parent: str | None) -> str | None:
        attached = spec.attach_to.tensorboard_dir if spec.attach_to is not None else None
        if attached and Path(attached).is_dir():
            key = attached
            self._attached.add(key)
        elif spec.attach_only:
            return None
        else:
            key = str(run_folder(Path(parent) if parent else self.base, spec.folder, shared=spec.reuse_tag is not None))
        self._writers[key] = EventWriter(key)
        self.log_params(key, spec.params)
        self.set_tags(key, spec.tags)
        return key

    def log_params(self, key: str, params: dict[str, str]) -> None:
        if params:
            self._writers[key].text("parameters", markdown_table(params))

    def set_tags(self, key: str, tags: dict[str, str]) -> None:
        if tags:
            self._writers[key].text("tags", markdown_table(tags))

    def log_metrics(self, key: str, metrics: dict[str, float], step: int) -> None:
        writer = self._writers[key]
        for name, value in metrics.items():  # float64, as the checkpoint's history holds them
            writer.scalar(name, value, step)
        writer.flush()

    def log_artifacts(self, key: str, folder: Path, prefix: str) -> None:
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        self._writers[key].text(f"artifacts/{prefix}", f"{folder}:\n\n" + json.dumps(files, indent=1))

    def log_file(self, key: str, path: Path, prefix: str | None) -> None:
        if path.suffix == ".md":
            self._writers[key].text(prefix or path.stem, path.read_text(encoding="utf-8"))

    def end(self, key: str, status: str) -> None:
        writer = self._writers.pop(key, None)
        if writer is not None:
            if key not in self._attached:
                writer.text("status", status)
            writer.close()

    def record(self, key: str) -> TrackingRecord:
        return TrackingRecord(tensorboard_dir=key)
