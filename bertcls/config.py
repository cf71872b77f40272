"""Typed configuration: command-line flags > environment > YAML > defaults.

Only the command layer builds a full :class:`Settings`; core functions take the section they need.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bertcls.errors import ConfigError

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
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(StrictModel):
    max_seq_len: int = Field(128, ge=8, le=8192)
    batch_size: int = Field(32, ge=1)
    num_epochs: int = Field(30, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    metric: Literal["f1", "accuracy"] = "f1"
    seed: int = 42


class EncoderSection(StrictModel):
    name_or_path: str = DEFAULT_ENCODER
    freeze: bool = True
    unfreeze_last_n_layers: int | None = Field(None, ge=0)
    encoder_lr: float = Field(2e-5, gt=0)
    pooling: Literal["mean", "cls", "max"] = "mean"
    encode_batch_size: int = Field(64, ge=1)

    _expand = field_validator("name_or_path", mode="before")(classmethod(lambda cls, v: _expand_optional(v)))


class ClassifierSection(StrictModel):
    bert_hidden_size: int = Field(384, ge=1)
    hidden_dims: list[int] = Field(default_factory=lambda: [512, 256])
    dropout_rate: float = Field(0.35, ge=0.0, lt=1.0)
    activation: Literal[ACTIVATIONS] = "gelu"  # type: ignore[valid-type]

    @field_validator("hidden_dims")
    @classmethod
    def _positive_dims(cls, dims: list[int]) -> list[int]:
        if any(d < 1 for d in dims):
            raise ValueError("every hidden dimension must be a positive integer")
        return dims


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
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.005, ge=0)
    warmup_ratio: float = Field(0.165, ge=0, le=1)
    betas: tuple[float, float] = (0.656, 0.999)
    max_grad_norm: float | None = Field(1.0, gt=0)

    _betas = field_validator("betas", mode="before")(classmethod(lambda cls, v: parse_betas(v)))

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
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    encoding: str = "utf-8"
    on_bad_rows: Literal["error", "drop"] = "error"

    _expand = field_validator("data_file", "train_file", "val_file", "test_file", mode="before")(
        classmethod(lambda cls, v: _expand_optional(v))
    )

    @model_validator(mode="after")
    def _explicit_split_complete(self) -> "DataSection":
        given = [f for f in (self.train_file, self.val_file, self.test_file) if f]
        if given and len(given) != 3:
            raise ValueError("give all three of train_file, val_file and test_file, or none of them")
        return self


def _range_validator(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
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

    @field_validator("num_hidden_layers", "dropout_rate", "lr", "weight_decay", "warmup_ratio")
    @classmethod
    def _ordered(cls, bounds: tuple, info: ValidationInfo) -> tuple:
        return _range_validator(info.field_name, bounds)

    @field_validator("lr", "weight_decay")
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
    study_name: str = "bert_opt"
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
    def _limits(self) -> "MemorySection":
        if self.min_batch_size > self.max_batch_size:
            raise ValueError("min_batch_size is above max_batch_size")
        if self.low_threshold >= self.threshold:
            raise ValueError("low_threshold must be below threshold")
        return self


class EvaluationSection(StrictModel):
    cv_folds: int = Field(7, ge=0)
    confidence_bins: int = Field(10, ge=2)
    top_confusions: int = Field(10, ge=1)

    @field_validator("cv_folds")
    @classmethod
    def _folds(cls, folds: int) -> int:
        if folds == 1:
            raise ValueError("cross-validation needs at least 2 folds (0 skips it)")
        return folds


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
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection)
    data: DataSection = Field(default_factory=DataSection)
    tuning: TuningSection = Field(default_factory=TuningSection)
    memory: MemorySection = Field(default_factory=MemorySection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)

    _expand = field_validator("output_root", mode="before")(classmethod(lambda cls, v: _expand_optional(v)))

    @property
    def root(self) -> Path:
        return Path(self.output_root)


class _DictSource(PydanticBaseSettingsSource):
    """A settings source that returns an already-loaded (YAML) mapping."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


def _settings_class(yaml_data: dict[str, Any]) -> type[Settings]:
    class LoadedSettings(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, **_ignored):
            return (init_settings, env_settings, _DictSource(settings_cls, yaml_data))

    return LoadedSettings


# --------------------------------------------------------------------------- YAML loading


class YamlDocument:
    """A parsed YAML config with the line number of every dotted key."""

    def __init__(self, path: Path | None, data: dict[str, Any], lines: dict[str, int]):
        self.path = path
        self.data = data
        self.lines = lines

    def line_of(self, dotted: str) -> int | None:
        parts = dotted.split(".")
        while parts:
            key = ".".join(parts)
            if key in self.lines:
                return self.lines[key]
            parts.pop()
        return None


def _collect_lines(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        if key_node.value == "<<":
            merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for item in merged:
                _collect_lines(item, prefix, lines)
            continue
        dotted = f"{prefix}{key_node.value}"
        lines[dotted] = key_node.start_mark.line + 1
        _collect_lines(value_node, dotted + ".", lines)


def load_yaml(path: Path | None) -> YamlDocument:
    """Read a YAML config safely; top-level keys starting with ``x-`` or ``_`` hold anchors only."""
    if path is None:
        return YamlDocument(None, {}, {})
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        lines: dict[str, int] = {}
        _collect_lines(yaml.compose(text), "", lines)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"Config file {path} is not valid YAML{where}: {problem}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {path} cannot be read: {exc}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of sections, not {type(data).__name__}.")
    data = {k: v for k, v in data.items() if not (str(k).startswith("x-") or str(k).startswith("_"))}
    return YamlDocument(path, data, lines)


def find_config_file(explicit: str | None, output_root_hint: str | None) -> Path | None:
    """``--config``, else ``./config.yml``, else ``<output_root>/config.yml``, else none."""
    if explicit:
        path = Path(expand_path_value(explicit))
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.")
        return path
    local = Path("config.yml")
    if local.is_file():
        return local
    if output_root_hint:
        candidate = Path(expand_path_value(output_root_hint)) / "config.yml"
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- sources


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for every leaf of a nested mapping (lists are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The ``BERTCLS_*`` variables as dotted keys (``BERTCLS_MODEL__BATCH_SIZE`` -> ``model.batch_size``)."""
    environ = os.environ if environ is None else environ
    found = {}
    for name, value in environ.items():
        if name.upper().startswith(ENV_PREFIX):
            found[name[len(ENV_PREFIX):].lower().replace("__", ".")] = value
    return found


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _source_of(dotted: str, flags: dict, env: dict, yaml_flat: dict) -> str:
    def covered(keys: dict) -> bool:
        return any(dotted == k or dotted.startswith(k + ".") for k in keys)

    for name, keys in (("flag", flags), ("env", env), ("yaml", yaml_flat)):
        if covered(keys):
            return name
    return "default"


class ResolvedConfig:
    """Settings plus where each value came from and the YAML file used."""

    def __init__(self, settings: Settings, sources: dict[str, str], config_path: Path | None):
        self.settings = settings
        self.sources = sources
        self.config_path = config_path

    def rows(self) -> list[tuple[str, Any, str]]:
        flat = flatten(self.settings.model_dump(mode="json"))
        return [(key, value, self.sources.get(key, "default")) for key, value in flat.items()]


def _format_problems(exc: ValidationError, doc: YamlDocument, yaml_flat: dict, flags: dict, env: dict) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).isdigit()]
        dotted = ".".join(loc) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling)"
        where = ""
        line = doc.line_of(dotted)
        source = _source_of(dotted, flags, env, yaml_flat)  # a flag or env value is not the file's fault
        from_yaml = source == "yaml" or (source == "default" and any(k.startswith(dotted + ".") for k in yaml_flat))
        if doc.path is not None and line is not None and from_yaml:
            where = f" ({doc.path} line {line})"
        problems.append(f"{dotted}: {message}{where}")
    return problems


def resolve_settings(
    flags: dict[str, Any] | None = None,
    config_file: str | None = None,
) -> ResolvedConfig:
    """Build the full settings. ``flags`` holds dotted keys set on the command line (``None`` = not given)."""
    flag_values = {k: v for k, v in (flags or {}).items() if v is not None}
    env = env_overrides()
    root_hint = flag_values.get("output_root") or env.get("output_root")
    path = find_config_file(config_file, root_hint)
    doc = load_yaml(path)
    yaml_flat = flatten(doc.data)
    try:
        settings = _settings_class(doc.data)(**_nest(flag_values))
    except ValidationError as exc:
        problems = _format_problems(exc, doc, yaml_flat, flag_values, env)
        raise ConfigError(f"The configuration has {len(problems)} problem(s).", problems) from None
    flat = flatten(settings.model_dump(mode="json"))
    sources = {key: _source_of(key, flag_values, env, yaml_flat) for key in flat}
    return ResolvedConfig(settings, sources, path)
