"""Resolving the configuration: command-line flags > environment > YAML > defaults, with the source of every value
and the YAML line of every key (for error messages)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from pydantic_settings.exceptions import SettingsError

from bertcls.config.settings import ENV_PREFIX, Settings, expand_path_value
from bertcls.runtime.errors import ConfigError


class _DictSource(PydanticBaseSettingsSource):
    """A settings source that returns an already-loaded (YAML) mapping."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


MAX_YAML_NODES = 100_000  # values in a config once its aliases are expanded


def _settings_class(yaml_data: dict[str, Any]) -> type[Settings]:
    class LoadedSettings(Settings):
        @classmethod
        def settings_customise_sources(  # type: ignore[override]  # pydantic passes every source by keyword
            cls, settings_cls, init_settings, env_settings, **_ignored
        ):
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


def expanded_size(root: yaml.Node | None) -> int:
    """How many values the document holds once every alias is expanded, counted without expanding (each shared
    node is sized once): an "alias bomb" of a few hundred bytes can stand for 10^9 values."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 1  # a node that contains itself counts once
            if isinstance(node, yaml.MappingNode):
                sizes[id(node)] += sum(size(k) + size(v) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                sizes[id(node)] += sum(size(v) for v in node.value)
        return sizes[id(node)]

    return 0 if root is None else size(root)


def load_yaml(path: Path | None) -> YamlDocument:
    """Read a YAML config safely; top-level keys starting with ``x-`` or ``_`` hold anchors only."""
    if path is None:
        return YamlDocument(None, {}, {})
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text)  # aliases stay shared nodes here: nothing is expanded yet
        if expanded_size(root) > MAX_YAML_NODES:
            raise ConfigError(
                f"Config file {path} expands to more than {MAX_YAML_NODES:,} values through its YAML aliases; "
                "a configuration is far smaller, so write it without nested aliases."
            )
        data = yaml.safe_load(text) or {}
        lines: dict[str, int] = {}
        _collect_lines(root, "", lines)
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
        if path.is_dir():
            raise ConfigError(f"Config file {path} is a directory; pass a YAML file with --config.")
        if path.exists() and not path.is_file():
            raise ConfigError(f"Config file {path} is not a regular file (a device or pipe); pass a YAML file.")
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


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``BERTCLS_*`` variables as dotted keys (``BERTCLS_MODEL__BATCH_SIZE`` -> ``model.batch_size``)."""
    variables = os.environ if environ is None else environ
    found = {}
    for name, value in variables.items():
        if name.upper().startswith(ENV_PREFIX):
            found[name[len(ENV_PREFIX) :].lower().replace("__", ".")] = value
    return found


def env_variable_problem(exc: Exception, env: dict[str, str]) -> str:
    """Name the environment variable a pydantic-settings parse error came from, when it can be found."""
    message = str(exc)
    for dotted in env:
        section = dotted.split(".")[0]
        if f'field "{section}"' in message or f'field "{dotted}"' in message:
            return f"Environment variable {ENV_PREFIX}{dotted.upper().replace('.', '__')} is not valid JSON"
    return "An environment variable holds a value that is not valid JSON"


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


def resolve_settings(flags: dict[str, Any] | None = None, config_file: str | None = None) -> ResolvedConfig:
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
    except SettingsError as exc:  # a BERTCLS_ variable holding malformed JSON
        raise ConfigError(
            f"{env_variable_problem(exc, env)}; lists and sections are JSON, e.g. '[256, 128]'."
        ) from None
    root = Path(settings.output_root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"The output root {root} is a file; pass a folder with --output-root.")
    flat = flatten(settings.model_dump(mode="json"))
    sources = {key: _source_of(key, flag_values, env, yaml_flat) for key in flat}
    return ResolvedConfig(settings, sources, path)
