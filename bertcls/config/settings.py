"""The configuration schema: every section, its defaults and its validation.

How values are found (flags > environment > YAML > defaults) lives in :mod:`bertcls.config.sources`. Only the
command layer builds a full :class:`Settings`. Many core functions still take the whole :class:`Settings` (the
workflow, tuning and evaluation entry points); the smaller ones take the section they need.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from bertcls.task import Task

# the kinds of task (bertcls.task turns a name into its Task object)
TaskName = Literal["multiclass", "multilabel"]
ACTIVATIONS = ("relu", "gelu", "silu", "elu", "tanh", "leaky_relu", "prelu")
ENV_PREFIX = "BERTCLS_"
DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_VAR_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_path_value(value: str) -> str:
    """Expand ``${VAR}``, ``${VAR:-default}``, ``$VAR`` and ``~``; an unset variable without default is an error."""

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ValueError(f"environment variable {name} is not set (use ${{{name}:-default}} to give a default)")

    expanded = _VAR_PATTERN.sub(substitute, value)
    return os.path.expanduser(expanded)


def _expand_optional(value: Any) -> Any:
    return expand_path_value(value) if isinstance(value, str) else value


class StrictModel(BaseModel):
    # no setting is infinite or NaN (``--lr inf`` trained a model whose every weight was NaN)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(StrictModel):
    max_seq_len: int = Field(128, ge=8, le=8192)
    batch_size: int | None = Field(None, ge=1)
    num_epochs: int = Field(20, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    num_threads: int | None = Field(None, ge=1)
    task: TaskName = "multiclass"
    metric: Literal["f1", "accuracy", "micro_f1", "samples_f1"] = "f1"
    seed: int = Field(42, ge=0, le=2**32 - 1)  # numpy and torch take seeds in [0, 2**32)

    @model_validator(mode="after")
    def _metric_fits_task(self) -> ModelSection:
        if self.task == "multiclass" and self.metric in ("micro_f1", "samples_f1"):
            raise ValueError(f"model.metric {self.metric} applies to multi-label models (model.task: multilabel)")
        return self

    def batch_size_for(self, *, fine_tune: bool) -> int:
        """``batch_size``, or by default 32 for a head on frozen embeddings and 16 for fine-tuning (measured: twice
        the updates per epoch lifted 2-epoch fine-tuning on SMS from 0.971 to 0.984 macro F1)."""
        return self.batch_size or (16 if fine_tune else 32)


class EncoderSection(StrictModel):
    name_or_path: str = DEFAULT_ENCODER
    freeze: bool = True
    unfreeze_last_n_layers: int | None = Field(None, ge=0)
    encoder_lr: float = Field(5e-5, gt=0)
    pooling: Literal["mean", "cls", "max"] = "mean"
    encode_batch_size: int = Field(64, ge=1)
    long_texts: Literal["truncate", "chunks"] = "truncate"
    chunk_stride: int | None = Field(None, ge=1)
    max_chunks: int = Field(8, ge=1)
    chunk_pooling: Literal["mean", "max"] = "mean"

    _expand = field_validator("name_or_path", mode="before")(classmethod(lambda _cls, v: _expand_optional(v)))

    def stride_for(self, max_seq_len: int) -> int:
        """Tokens between the starts of consecutive windows: ``chunk_stride``, or 3/4 of a window (1/4 overlap)."""
        return self.chunk_stride or max(1, (max_seq_len - 2) * 3 // 4)


class ClassifierSection(StrictModel):
    bert_hidden_size: int = Field(384, ge=1)
    hidden_dims: list[int] = Field(default_factory=lambda: [512])
    dropout_rate: float = Field(0.1, ge=0.0, lt=1.0)
    activation: Literal[ACTIVATIONS] = "gelu"  # type: ignore[valid-type]
    standardize_inputs: bool = True
    lexical_features: bool = True
    class_weights: Literal["auto", "none", "balanced"] = "auto"
    min_labels: Literal[0, 1] = 0
    head: Literal["auto", "mlp", "linear"] = "auto"
    linear_l2: float = Field(1.0, gt=0)
    linear_embedding_penalty: float = Field(4.0, gt=0)

    def resolved_class_weights(self, task: Task) -> str:
        """``auto``: the task's default (balanced for one label per text, none for label sets)."""
        return task.default_class_weights if self.class_weights == "auto" else self.class_weights

    def resolved_head(self, task: Task, *, frozen: bool) -> str:
        """``auto``: the task's default (a linear head for label sets on a frozen encoder, the MLP otherwise)."""
        return task.default_head(frozen=frozen) if self.head == "auto" else self.head

    @field_validator("hidden_dims")
    @classmethod
    def _positive_dims(cls, dims: list[int]) -> list[int]:
        if any(d < 1 for d in dims):
            raise ValueError("every hidden dimension must be a positive integer")
        return dims


class LexicalSection(StrictModel):
    """The TF-IDF view of the text that ``classifier.lexical_features`` adds beside the embedding."""

    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] | None = None
    min_df: int = Field(2, ge=1)
    max_features: int | None = Field(200_000, ge=1)
    sublinear_tf: bool = True
    lr: float = Field(0.1, gt=0)
    weight_decay: float = Field(0.0, ge=0)

    @field_validator("word_ngrams", "char_ngrams")
    @classmethod
    def _ngrams(cls, bounds: tuple[int, int] | None) -> tuple[int, int] | None:
        if bounds is not None and not 1 <= bounds[0] <= bounds[1]:
            raise ValueError("n-gram bounds must satisfy 1 <= low <= high")
        return bounds


def parse_betas(value: Any) -> Any:
    """Accept ``[0.9, 0.999]`` and the original's string form ``(0.656, 0.999)``."""
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"betas must look like (0.9, 0.999), got {value!r}") from None
        return list(parsed) if isinstance(parsed, (tuple, list)) else parsed
    return value


class OptimizerSection(StrictModel):
    optimizer_choice: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = Field(1.0, gt=0)

    _betas = field_validator("betas", mode="before")(classmethod(lambda _cls, v: parse_betas(v)))

    def head_lr(self, task: Task) -> float:
        """``lr``, or the task's default (1e-3 for one label per text, 1e-2 for sigmoid heads with rare labels)."""
        return self.lr or task.default_head_lr

    @field_validator("betas")
    @classmethod
    def _betas_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError("each beta must be in [0, 1)")
        return betas


class EarlyStoppingSection(StrictModel):
    enabled: bool = True
    patience: int = Field(5, ge=1)
    min_epochs: int = Field(5, ge=0)
    improvement_threshold: float = Field(0.001, ge=0)
    smoothing_window: int = Field(3, ge=1)
    trend_window: int = Field(5, ge=2)
    regression_threshold: float = Field(0.2, gt=0, lt=1)


class DataSection(StrictModel):
    data_file: str | None = None
    train_file: str | None = None
    val_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    label_column: str = "category"
    label_separator: str = Field("|", min_length=1)
    label_columns: list[str] | None = None
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    encoding: str = "utf-8"
    on_bad_rows: Literal["error", "drop"] = "error"
    on_conflicting_labels: Literal["error", "drop", "majority", "union"] = "error"
    exclude_rows: str | None = None

    _expand = field_validator("data_file", "train_file", "val_file", "test_file", "exclude_rows", mode="before")(
        classmethod(lambda _cls, v: _expand_optional(v))
    )

    @model_validator(mode="after")
    def _explicit_split_complete(self) -> DataSection:
        given = [f for f in (self.train_file, self.val_file, self.test_file) if f]
        if given and len(given) != 3:
            raise ValueError("give all three of train_file, val_file and test_file, or none of them")
        columns = self.label_columns
        if columns is not None and (len(columns) < 2 or len(set(columns)) != len(columns)):
            raise ValueError("data.label_columns needs at least two distinct column names")
        return self


def _range_validator(bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = bounds
    if low > high:
        raise ValueError(f"low {low} is above high {high}")
    return bounds


class SearchSpace(StrictModel):
    batch_size: list[int] = Field(default_factory=lambda: [8, 16, 32, 64])
    num_hidden_layers: tuple[int, int] = (1, 4)
    dropout_rate: tuple[float, float] = (0.1, 0.6)
    lr: tuple[float, float] = (1e-6, 5e-3)
    weight_decay: tuple[float, float] = (1e-8, 1e-2)
    warmup_ratio: tuple[float, float] = (0.0, 0.3)
    activation: list[str] = Field(default_factory=lambda: list(ACTIVATIONS))
    linear_l2: tuple[float, float] = (0.1, 10.0)

    @field_validator("num_hidden_layers", "dropout_rate", "lr", "weight_decay", "warmup_ratio", "linear_l2")
    @classmethod
    def _ordered(cls, bounds: tuple) -> tuple:
        return _range_validator(bounds)

    @field_validator("lr", "weight_decay", "linear_l2")
    @classmethod
    def _log_scale(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if bounds[0] <= 0:
            raise ValueError("searched on a log scale: the low bound must be > 0")
        return bounds

    @field_validator("dropout_rate")
    @classmethod
    def _dropout(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if bounds[0] < 0 or bounds[1] >= 1:
            raise ValueError("dropout_rate must lie in [0, 1)")
        return bounds

    @field_validator("num_hidden_layers")
    @classmethod
    def _depth(cls, bounds: tuple[int, int]) -> tuple[int, int]:
        if bounds[0] < 0:
            raise ValueError("num_hidden_layers must be >= 0")
        return bounds

    @field_validator("activation")
    @classmethod
    def _activations(cls, names: list[str]) -> list[str]:
        unknown = [a for a in names if a not in ACTIVATIONS]
        if unknown or not names:
            raise ValueError(f"unknown activation(s) {unknown}; choose from {', '.join(ACTIVATIONS)}")
        return names

    @field_validator("batch_size")
    @classmethod
    def _batch_sizes(cls, sizes: list[int]) -> list[int]:
        if not sizes or any(b < 1 for b in sizes):
            raise ValueError("batch_size choices must be positive integers")
        return sizes


class PBTSection(StrictModel):
    population_size: int = Field(4, ge=2)
    perturbation_interval: int = Field(2, ge=1)
    quantile_fraction: float = Field(0.2, gt=0, le=0.5)
    exploit_probability: float = Field(0.5, ge=0, le=1)
    perturb_factors: tuple[float, float] = (0.8, 1.2)


class TuningSection(StrictModel):
    study_name: str = Field("bert_opt", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    strategy: Literal["tpe", "pbt"] = "tpe"
    n_trials: int = Field(10, ge=1)
    timeout: float | None = Field(None, gt=0)
    storage: str | None = None
    heartbeat_interval: int = Field(30, ge=1)
    grace_period: int = Field(120, ge=1)
    search_space: SearchSpace = Field(default_factory=SearchSpace)
    pbt: PBTSection = Field(default_factory=PBTSection)


class MemorySection(StrictModel):
    enabled: bool = True
    threshold: float = Field(0.85, gt=0, le=1)
    low_threshold: float = Field(0.5, gt=0, le=1)
    min_batch_size: int = Field(8, ge=1)
    max_batch_size: int = Field(64, ge=1)
    grow_after_steps: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _limits(self) -> MemorySection:
        if self.min_batch_size > self.max_batch_size:
            raise ValueError("min_batch_size is above max_batch_size")
        if self.low_threshold >= self.threshold:
            raise ValueError("low_threshold must be below threshold")
        return self


class CalibrationSection(StrictModel):
    method: Literal["temperature", "none"] = "temperature"


class EvaluationSection(StrictModel):
    cv_folds: int = Field(7, ge=0)
    confidence_bins: int = Field(10, ge=2)
    top_confusions: int = Field(10, ge=1)
    target_accuracy: float = Field(0.99, gt=0, le=1)
    find_label_issues: bool = False
    near_duplicate_threshold: float = Field(0.97, gt=0, le=1)
    explain_errors: int = Field(5, ge=0)  # most confident errors explained in report.html (0: none)

    @field_validator("cv_folds")
    @classmethod
    def _folds(cls, folds: int) -> int:
        if folds == 1:
            raise ValueError("cross-validation needs at least 2 folds (0 skips it)")
        return folds


class ServeSection(StrictModel):
    """``bertcls serve``: where it listens, how it batches, what it accepts."""

    host: str = "127.0.0.1"  # loopback unless said otherwise
    port: int = Field(8000, ge=0, le=65535)  # 0: any free port (said in the log)
    backend: Literal["torch", "onnx"] = "torch"
    max_batch_size: int = Field(64, ge=1, le=4096)  # texts per encoder batch
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)  # how long a batch waits for requests already arriving
    max_queue: int = Field(1024, ge=1)  # texts waiting; beyond it, 503 with Retry-After
    workers: int = Field(1, ge=1, le=64)
    api_key_file: str | None = None
    api_key: SecretStr | None = None  # BERTCLS_SERVE__API_KEY; never printed
    min_confidence: float | None = Field(None, ge=0, le=1)
    threads: int | None = Field(None, ge=1)
    max_texts_per_request: int = Field(256, ge=1)
    max_explain_texts: int = Field(8, ge=1)  # texts per POST /v1/explain (about 2 s each on 2 cores)
    max_body_bytes: int = Field(4_000_000, ge=1024)
    shutdown_timeout_s: float = Field(10.0, gt=0)

    _expand = field_validator("api_key_file", mode="before")(classmethod(lambda _cls, v: _expand_optional(v)))


class ExplainSection(StrictModel):
    """``bertcls explain``: how many texts, how finely integrated gradients integrate, where the output goes."""

    steps: int = Field(8, ge=2, le=1024)  # integration steps (Gauss-Legendre) per path, to start with
    max_steps: int = Field(64, ge=2, le=1024)  # a label whose gap is over 5% is integrated again at 2x, up to this
    method: Literal["expected", "presence", "embeddings"] = "expected"  # the paths integrated gradients take
    baselines: int = Field(4, ge=1, le=64)  # expected: random partial removals per text (one path from each)
    seed: int = Field(0, ge=0, lt=2**32)  # expected: the removals' seed (with the text itself)
    limit: int = Field(20, ge=1)  # texts explained when --rows is not given
    label: str | None = None  # explain this label instead of the predicted one(s)
    output_file: str = "explanations.csv"  # the page is written beside it, as .html

    @model_validator(mode="after")
    def _steps_within_cap(self) -> ExplainSection:
        if self.steps > self.max_steps:
            raise ValueError(f"explain.steps ({self.steps}) must be at most explain.max_steps ({self.max_steps})")
        return self


class SuggestSection(StrictModel):
    """``bertcls suggest``: how many pool texts to pick, how, and where they go."""

    n: int = Field(50, ge=1)
    strategy: Literal["diverse", "uncertainty", "margin", "entropy", "activelab"] = "diverse"
    output_file: str = "to_label.csv"
    seed: int = Field(0, ge=0, lt=2**32)  # diverse: the k-means start


TrackerName = Literal["mlflow", "tensorboard"]
TRACKERS: tuple[str, ...] = ("mlflow", "tensorboard")
# what a tracking URI may be: a tracking server, a database (SQLAlchemy URL) or a local folder
TRACKING_URI_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file")


def parse_trackers(value: Any) -> Any:
    """``none``, ``mlflow``, ``mlflow,tensorboard`` or a list of those: the trackers, in order, without repeats."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        return value
    names = [str(item).strip().lower() for item in items if str(item).strip()]
    unknown = [n for n in names if n not in (*TRACKERS, "none")]
    if unknown:
        raise ValueError(f"unknown tracking backend {unknown[0]!r}; choose none, mlflow or tensorboard")
    return list(dict.fromkeys(n for n in names if n != "none"))


class TrackingSection(StrictModel):
    """Experiment tracking: MLflow runs and TensorBoard event files for train, optimize and evaluate."""

    # none: []; the flag --track mlflow,tensorboard (or repeated)
    backend: Annotated[list[TrackerName], NoDecode] = Field(default_factory=list)
    uri: str | None = None  # MLflow: http(s)://host:port, a database URL, or a folder (default <root>/mlruns)
    experiment: str | None = Field(None, min_length=1, max_length=500)  # default: the output root's folder name
    run_name: str | None = Field(None, min_length=1, max_length=250)  # default: <command>-<YYYYmmdd-HHMMSS>
    tensorboard_dir: str | None = None  # default <output_root>/tensorboard
    flush_timeout_s: float = Field(15.0, gt=0, le=600)  # how long a command waits at its end for the tracker

    _trackers = field_validator("backend", mode="before")(classmethod(lambda _cls, v: parse_trackers(v)))
    _expand = field_validator("tensorboard_dir", mode="before")(classmethod(lambda _cls, v: _expand_optional(v)))

    @field_validator("uri", mode="before")
    @classmethod
    def _known_scheme(cls, uri: Any) -> Any:
        if not isinstance(uri, str):
            return uri
        uri = expand_path_value(uri.strip())
        scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
        if scheme and scheme not in TRACKING_URI_SCHEMES:
            raise ValueError(
                f"tracking.uri scheme {scheme!r} is not one MLflow tracks to here; give http(s)://host:port, a "
                "database URL (sqlite, postgresql, mysql, mssql) or a folder"
            )
        return uri


class Settings(BaseSettings):
    """The whole resolved configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    output_root: str = "bertcls_output"
    verbosity: int = Field(1, ge=0, le=2)
    model: ModelSection = Field(default_factory=ModelSection)
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    classifier: ClassifierSection = Field(default_factory=ClassifierSection)
    lexical: LexicalSection = Field(default_factory=LexicalSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection)
    data: DataSection = Field(default_factory=DataSection)
    tuning: TuningSection = Field(default_factory=TuningSection)
    memory: MemorySection = Field(default_factory=MemorySection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    calibration: CalibrationSection = Field(default_factory=CalibrationSection)
    serve: ServeSection = Field(default_factory=ServeSection)
    explain: ExplainSection = Field(default_factory=ExplainSection)
    suggest: SuggestSection = Field(default_factory=SuggestSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)

    _expand = field_validator("output_root", mode="before")(classmethod(lambda _cls, v: _expand_optional(v)))

    @model_validator(mode="after")
    def _chunk_windows_overlap(self) -> Settings:
        stride = self.encoder.chunk_stride
        if self.encoder.long_texts == "chunks" and stride is not None and stride > self.model.max_seq_len - 2:
            raise ValueError(
                f"encoder.chunk_stride ({self.encoder.chunk_stride}) must be at most model.max_seq_len - 2 "
                f"({self.model.max_seq_len - 2}) so that windows cover the whole text"
            )
        return self

    @model_validator(mode="after")
    def _label_columns_need_multilabel(self) -> Settings:
        if self.data.label_columns and self.model.task != "multilabel":
            raise ValueError("data.label_columns holds 0/1 columns of a multi-label task; add --multi-label")
        return self

    @model_validator(mode="after")
    def _linear_head_is_frozen(self) -> Settings:
        if self.classifier.head == "linear" and not self.encoder.freeze:
            raise ValueError("classifier.head linear is fitted on a frozen encoder's embeddings; drop --fine-tune")
        return self

    @property
    def root(self) -> Path:
        return Path(self.output_root)
