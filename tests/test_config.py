"""Configuration: precedence, YAML features, expansion, betas, validation with line numbers."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bertcls.config.settings import expand_path_value
from bertcls.config.sources import resolve_settings
from bertcls.runtime.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("flag,env,yaml_value", list(itertools.product([None, 11], [None, 22], [None, 33])))
def test_precedence_matrix(tmp_path, monkeypatch, flag, env, yaml_value):
    config = write(tmp_path / "c.yml", f"model:\n  batch_size: {yaml_value}\n" if yaml_value else "model: {}\n")
    if env:
        monkeypatch.setenv("BERTCLS_MODEL__BATCH_SIZE", str(env))
    resolved = resolve_settings({"model.batch_size": flag}, str(config))
    expected, source = next(
        ((v, s) for v, s in ((flag, "flag"), (env, "env"), (yaml_value, "yaml")) if v), (None, "default")
    )
    assert resolved.settings.model.batch_size == expected
    assert resolved.sources["model.batch_size"] == source


def test_flag_on_one_nested_key_keeps_yaml_siblings(tmp_path):
    config = write(tmp_path / "c.yml", "model:\n  batch_size: 16\n  num_epochs: 4\n")
    settings = resolve_settings({"model.num_epochs": 2}, str(config)).settings
    assert (settings.model.batch_size, settings.model.num_epochs) == (16, 2)


def test_anchors_aliases_and_merge_keys(tmp_path):
    config = write(
        tmp_path / "c.yml",
        (
            "x-head: &head\n  dropout_rate: 0.2\n  activation: silu\n"
            "x-dims: &dims [64, 32]\n"
            "classifier:\n  <<: *head\n  hidden_dims: *dims\n  activation: tanh\n"
        ),
    )
    cls = resolve_settings({}, str(config)).settings.classifier
    assert (cls.dropout_rate, cls.activation, cls.hidden_dims) == (0.2, "tanh", [64, 32])


def test_env_expansion_in_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_HOME", "/srv/data")
    monkeypatch.setenv("HOME", "/home/ada")
    config = write(
        tmp_path / "c.yml",
        (
            "output_root: ${RUNS:-/tmp/runs}/x\n"
            "data:\n  data_file: ${DATA_HOME}/bbc.csv\n  train_file: ~/t.csv\n  val_file: v.csv\n  test_file: t.csv\n"
        ),
    )
    settings = resolve_settings({}, str(config)).settings
    assert settings.output_root == "/tmp/runs/x"
    assert settings.data.data_file == "/srv/data/bbc.csv"
    assert settings.data.train_file == "/home/ada/t.csv"


def test_unset_variable_is_an_error_naming_it(tmp_path):
    config = write(tmp_path / "c.yml", "data:\n  data_file: ${NOT_SET_ANYWHERE}/x.csv\n")
    with pytest.raises(ConfigError) as info:
        resolve_settings({}, str(config))
    assert "NOT_SET_ANYWHERE" in info.value.problems[0]
    with pytest.raises(ValueError, match="NOT_SET_ANYWHERE"):
        expand_path_value("${NOT_SET_ANYWHERE}")


@pytest.mark.parametrize(
    ("text", "expected"), [("[0.9, 0.98]", (0.9, 0.98)), ("(0.7, 0.99)", (0.7, 0.99)), ("'(0.8, 0.95)'", (0.8, 0.95))]
)
def test_betas_both_forms(tmp_path, text, expected):
    config = write(tmp_path / "c.yml", f"optimizer:\n  betas: {text}\n")
    assert resolve_settings({}, str(config)).settings.optimizer.betas == expected


def test_betas_garbage_is_rejected(tmp_path):
    config = write(tmp_path / "c.yml", "optimizer:\n  betas: (0.9, oops)\n")
    with pytest.raises(ConfigError, match="problem"):
        resolve_settings({}, str(config))


def test_typo_in_nested_section_is_rejected(tmp_path):
    config = write(tmp_path / "c.yml", "model:\n  bach_size: 3\n")
    with pytest.raises(ConfigError) as info:
        resolve_settings({}, str(config))
    assert "model.bach_size" in info.value.problems[0] and "line 2" in info.value.problems[0]


def test_config_discovery_order(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    write(root / "config.yml", "model:\n  seed: 5\n")
    assert resolve_settings({"output_root": str(root)}).settings.model.seed == 5
    write(tmp_path / "config.yml", "model:\n  seed: 6\n")
    assert resolve_settings({"output_root": str(root)}).settings.model.seed == 6


def test_validate_prints_sources(cli, tmp_path, monkeypatch):
    config = write(tmp_path / "c.yml", "model:\n  batch_size: 16\n")
    monkeypatch.setenv("BERTCLS_MODEL__SEED", "9")
    code, out, _ = cli("config", "validate", "--config", config, "--output-root", tmp_path / "o")
    assert code == 0
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    assert "yaml" in rows["model.batch_size"] and "env" in rows["model.seed"]
    assert "flag" in rows["output_root"] and "default" in rows["model.num_epochs"]


def test_validate_lists_every_problem_with_lines(cli, tmp_path):
    config = write(
        tmp_path / "bad.yml",
        (
            "model:\n  max_seq_len: 2\n  metric: auc\n"
            "classifier:\n  activation: swish\n"
            "tuning:\n  search_space:\n    lr: [0.1, 0.001]\n"
        ),
    )
    code, _, err = cli("config", "validate", "--config", config)
    assert code == 2
    assert "4 problem" in err
    for expected in (
        "model.max_seq_len",
        "line 2",
        "model.metric",
        "line 3",
        "classifier.activation",
        "line 5",
        "tuning.search_space",
        "line 8",
    ):
        assert expected in err
    assert "Traceback" not in err


def test_validate_reports_yaml_syntax_line(cli, tmp_path):
    config = write(tmp_path / "broken.yml", "model:\n  batch_size: [1, 2\n")
    code, _, err = cli("config", "validate", "--config", config)
    assert code == 2 and "line" in err and "not valid YAML" in err


def test_missing_config_file_is_exit_2(cli, tmp_path):
    code, _, err = cli("config", "validate", "--config", tmp_path / "nope.yml")
    assert code == 2 and "does not exist" in err


def test_underscore_flag_spelling(cli, tmp_path):
    code, out, _ = cli("config", "validate", "--output_root", "u")
    assert code == 0
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    assert "flag" in rows["output_root"] and " u " in rows["output_root"]


def test_repo_config_is_valid():
    repo_config = Path(__file__).resolve().parents[1] / "config.yml"
    settings = resolve_settings({}, str(repo_config)).settings
    assert settings.optimizer.betas == (0.656, 0.999)
    assert settings.classifier.dropout_rate == 0.35


def test_bad_flag_values_are_one_sentence_and_exit_2(cli):
    for args, expected in (
        (("train", "--num-epochs", "abc"), "--num-epochs"),
        (("train", "--bogus"), "--bogus"),
        (("predict", "--top-k", "0"), "--top-k"),
    ):
        code, out, err = cli(*args)
        assert code == 2 and expected in err and "Traceback" not in err + out
        assert len(err.strip().splitlines()) == 1


def test_bad_flag_value_is_not_blamed_on_the_yaml_file(tmp_path):
    config = write(tmp_path / "c.yml", "evaluation:\n  cv_folds: 7\nmodel:\n  batch_size: 0\n")
    with pytest.raises(ConfigError) as info:
        resolve_settings({"evaluation.cv_folds": 1}, str(config))
    folds, batch = sorted(info.value.problems)
    assert folds.startswith("evaluation.cv_folds") and "line" not in folds
    assert batch.startswith("model.batch_size") and "line 4" in batch
