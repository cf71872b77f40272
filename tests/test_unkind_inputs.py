"""Unkind inputs and faults, second round (issue 21, continued): a file where a folder should be, read-only roots
and full disks (in a small file system of a mount namespace of this test's own), metadata bombs, byte-order marks
and binary files, input made for another model, Ctrl-C during the encoding pass, and repeated signals."""

from __future__ import annotations

import glob
import hashlib
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bertcls.runtime.interrupts import Interrupted, StopRequest
from tests.conftest import thread_subset

BERTCLS = [sys.executable, "-m", "bertcls"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- a file in the way, read-only roots, full disks


def test_a_file_where_the_output_root_or_output_folder_should_be_is_one_sentence(cli, threads_small, tmp_path):
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("not a folder")
    code, _, err = cli("train", "--output-root", in_the_way / "sub", "--data-file", threads_small)
    assert code == 2 and "Not a directory" in err and "is a file, not a folder" in err and "Traceback" not in err
    data = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a refund please"]}).to_csv(data, index=False)
    code, _, err = cli("predict", "--output-root", tmp_path, "--data-file", data, "--output-file", in_the_way / "o.csv")
    assert code == 2 and "Traceback" not in err and in_the_way.read_text() == "not a folder"


def mount_namespace_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


needs_mount_namespace = pytest.mark.skipif(
    not mount_namespace_available(), reason="needs `unshare --mount` (a private mount namespace) for a small tmpfs"
)


def in_small_file_system(mount: Path, model_root: Path, commands: list[list[str]], *, size_kb: int | None = None,
                         read_only: bool = False) -> list[tuple[int, str]]:  # fmt: skip
    """Run ``commands`` (``$M`` is the mount point) in a private mount namespace whose ``mount`` is a tmpfs holding
    a copy of ``model_root`` (``size_kb`` free beyond it, or read-only), and return each command's exit code and
    output. Before and after, the digests of the model and its splits are compared inside the namespace."""
    used_kb = sum(p.stat().st_size for p in model_root.rglob("*") if p.is_file()) // 1024 + 64
    size = f"{used_kb + (size_kb or 0)}k" if size_kb is not None else "512m"
    mount.mkdir(parents=True, exist_ok=True)
    lines = [
        "set -u",
        f"mount -t tmpfs -o size={size} tmpfs {mount}",
        f"cp -a {model_root}/. {mount}/",
        f"cd {mount} && sha256sum best_trials/best_model.pt data/*.csv > /tmp/.digests.$$ && cd - > /dev/null",
    ]
    if read_only:
        lines.append(f"mount -o remount,ro {mount}")
    for number, command in enumerate(commands):
        quoted = " ".join(f"'{part}'" for part in command).replace("'$M", f"'{mount}")
        lines += [f"echo '@@ {number}'", f"{quoted} 2>&1", 'echo "@@ rc=$?"']
    lines += [
        f"cd {mount} && sha256sum --quiet -c /tmp/.digests.$$ && echo '@@ intact'; rm -f /tmp/.digests.$$",
        f"find {mount} -name '*.tmp' | sed 's/^/@@ temp left: /'",
    ]
    script = mount.parent / "script.sh"
    script.write_text("\n".join(lines) + "\n")
    done = subprocess.run(["unshare", "--mount", "bash", str(script)], capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert "@@ intact" in output, output  # the model and its splits are as they were
    assert "@@ temp left" not in output, output
    results = []
    for block in output.split("@@ ")[1:]:
        if block.startswith("rc="):
            results[-1] = (int(block.split("=")[1].split()[0]), results[-1][1])
        elif block[0].isdigit():
            results.append((-1, block))
    return results


@pytest.mark.slow
@needs_mount_namespace
def test_a_read_only_output_root_is_one_sentence_and_still_serves_predict_and_inspect(trained_model, tmp_path):
    data = tmp_path / "in.csv"
    thread_subset(4).to_csv(data, index=False)
    elsewhere = tmp_path / "out" / "p.csv"
    elsewhere.parent.mkdir()
    commands = [
        [*BERTCLS, "train", "--output-root", "$M", "--data-file", str(data), "--verbosity", "0"],
        [*BERTCLS, "export", "--output-root", "$M", "--verbosity", "0"],
        [*BERTCLS, "evaluate", "--output-root", "$M", "--cv-folds", "0", "--verbosity", "0"],
        [
            *BERTCLS,
            "predict",
            "--output-root",
            str(trained_model),
            "--data-file",
            str(data),
            "--output-file",
            "$M/p.csv",
            "--verbosity",
            "0",
        ],  # fmt: skip
        [*BERTCLS, "predict", "--output-root", "$M", "--data-file", str(data), "--output-file", str(elsewhere)],
        [*BERTCLS, "inspect", "--output-root", "$M", "--json"],
    ]
    results = in_small_file_system(tmp_path / "ro", trained_model, commands, read_only=True)
    for code, output in results[:4]:
        assert code == 2 and "Read-only file system" in output and "choose a writable" in output, output
        assert "Traceback" not in output and output.count("Error:") == 1
    for code, output in results[4:]:
        assert code == 0 and "logging to the console only" in output, output
    assert len(pd.read_csv(elsewhere)) == len(pd.read_csv(data))


@pytest.mark.slow
@needs_mount_namespace
def test_a_full_disk_while_train_saves_or_predict_writes_keeps_every_earlier_file(trained_model, tmp_path):
    data = tmp_path / "in.csv"
    many = pd.concat([thread_subset(60, seed=s) for s in range(10)], ignore_index=True)  # an output of about 1 MB
    many.to_csv(data, index=False)
    train = [*BERTCLS, "train", "--output-root", "$M", "--data-file", str(data), "--max-seq-len", "128", "--seed",
             "7", "--num-epochs", "2", "--verbosity", "0"]  # fmt: skip
    predict = [*BERTCLS, "predict", "--output-root", "$M", "--data-file", str(data), "--output-file",
               "$M/predictions/out.csv", "--verbosity", "0"]  # fmt: skip
    results = in_small_file_system(tmp_path / "full", trained_model, [train, predict], size_kb=300)
    for code, output in results:
        assert code == 2 and "No space left on device" in output and "free some space" in output, output
        assert "Traceback" not in output and output.count("Error:") == 1
    assert "last_state.pt" in results[0][1] or "best_model.pt" in results[0][1]  # the file is named
    assert "predictions/out.csv" in results[1][1]


# ---------------------------------------------------------------- metadata bombs


def test_a_checkpoint_whose_metadata_expands_to_billions_of_values_is_refused(cli, trained_model, tmp_path):
    payload = torch.load(trained_model / "best_trials" / "best_model.pt", map_location="cpu", weights_only=True)
    bomb: list = ["x"]
    for _ in range(30):
        bomb = [bomb] * 10  # 10^30 leaves once expanded; a few kB as a pickle, whose memo shares each level
    payload["meta"]["settings"]["bomb"] = bomb
    path = tmp_path / "bomb.pt"
    torch.save(payload, path)
    assert path.stat().st_size < 3_000_000
    for command in (("inspect", "--json"), ("inspect",), ("predict", "--data-file", "in.csv")):
        code, out, err = cli(*command, "--output-root", tmp_path, "--best-model", path)
        assert code == 2 and "more than 1,000,000 values" in err and "Traceback" not in err and not out.strip()


# ---------------------------------------------------------------- byte-order marks, binary files, misleading messages


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_text_with_a_byte_order_mark_is_read_in_its_encoding(cli, trained_model, tmp_path, encoding):
    frame = thread_subset(4)
    data = tmp_path / "bom.csv"
    data.write_bytes(frame.to_csv(index=False).encode(encoding))  # Python writes the mark for these three
    code, _, err = cli("predict", "--output-root", trained_model, "--data-file", data, "--output-file", "o.csv")
    assert code == 0, err
    written = pd.read_csv(trained_model / "predictions" / "o.csv", dtype=str, keep_default_na=False)
    assert written["text"].tolist() == frame["text"].tolist() and list(written.columns)[0] == "text"

    from bertcls.config.settings import DataSection
    from bertcls.data.labelled import read_labelled_csv

    read = read_labelled_csv(data, DataSection())
    assert read["text"].tolist() == frame["text"].tolist() and list(read.columns) == ["text", "category"]


def test_random_bytes_are_called_binary_not_a_wrong_encoding(cli, trained_model, tmp_path):
    noise = tmp_path / "noise.csv"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    code, _, err = cli("train", "--output-root", tmp_path / "t", "--data-file", noise)
    assert code == 2 and "looks like a binary file" in err and "latin-1" not in err
    code, _, err = cli("predict", "--output-root", trained_model, "--data-file", noise, "--output-file", "n.csv")
    assert code == 2 and "looks like a binary file" in err and "latin-1" not in err


def test_latin1_text_still_gets_the_encoding_hint(cli, tmp_path):
    data = tmp_path / "latin.csv"
    data.write_bytes("text,category\ncaf\xe9 ferm\xe9,a\n".encode("latin-1"))
    code, _, err = cli("train", "--output-root", tmp_path / "t", "--data-file", data)
    assert code == 2 and "--encoding latin-1" in err and "line 2" in err


def test_exclude_rows_naming_a_folder_says_folder(cli, threads_small, tmp_path):
    code, _, err = cli(
        "train", "--output-root", tmp_path / "t", "--data-file", threads_small, "--exclude-rows", tmp_path
    )
    assert code == 2 and "is a folder, not a file" in err and "does not exist" not in err


# ---------------------------------------------------------------- input made for another model


def test_predict_warns_when_labelled_input_was_made_for_another_task_or_model(cli, trained_model, tmp_path, caplog):
    frame = thread_subset(2)
    multi = frame.assign(category=["billing|shipping", "refund|billing"] * (len(frame) // 2))
    paths = {"multi": tmp_path / "multi.csv", "other": tmp_path / "other.csv", "fits": tmp_path / "fits.csv"}
    multi.to_csv(paths["multi"], index=False)
    frame.assign(category="spam").to_csv(paths["other"], index=False)
    frame.to_csv(paths["fits"], index=False)
    said = {}
    for name, path in paths.items():
        caplog.clear()
        code, _, err = cli("predict", "--output-root", trained_model, "--data-file", path, "--output-file", "x.csv")
        assert code == 0, err
        said[name] = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "join several of this model's labels (for example 'billing|shipping')" in said["multi"]
    assert "this model is single-label" in said["multi"]
    assert "None of the input's labels is one of this model's (for example 'spam')" in said["other"]
    assert "this model" not in said["fits"]


def test_a_multi_label_model_warns_about_labels_it_never_had():
    from bertcls.config.settings import DataSection
    from bertcls.task import MultiLabel, SingleLabel

    cfg = DataSection(label_column="labels", label_separator=";")
    chunk = pd.DataFrame({"text": ["a", "b"], "labels": ["spam", "ham"]})
    assert "for example 'spam'" in MultiLabel().input_mismatch(chunk, cfg, ["joy", "anger"])
    assert MultiLabel().input_mismatch(chunk.assign(labels=["joy;anger", ""]), cfg, ["joy", "anger"]) is None
    assert SingleLabel().input_mismatch(chunk.assign(labels=["joy", "anger"]), cfg, ["joy", "anger"]) is None


# ---------------------------------------------------------------- Ctrl-C while encoding, repeated signals


@pytest.mark.slow
def test_ctrl_c_during_a_cold_encoding_pass_stops_within_a_block_and_keeps_what_was_encoded(tmp_path):
    vocabulary = ["ticket", "refund", "order", "late", "parcel", "invoice", "charge", "login", "password", "crash"]
    words = np.random.default_rng(1).choice(vocabulary, size=(3000, 90))
    texts = [" ".join(row) + f" #{i}" for i, row in enumerate(words)]
    frame = pd.DataFrame({"text": texts, "category": ["a", "b", "c"] * 1000})
    data, root = tmp_path / "cold.csv", tmp_path / "root"
    frame.to_csv(data, index=False)
    command = [*BERTCLS, "train", "--output-root", str(root), "--data-file", str(data), "--max-seq-len", "128"]
    worker = subprocess.Popen([*command, "--verbosity", "0"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and worker.poll() is None:
        logs = glob.glob(str(root / "logs" / "train_*.log"))
        if logs and "texts not found in the cache" in Path(logs[0]).read_text():
            break
        time.sleep(0.1)
    time.sleep(1.0)  # into the pass
    worker.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    _, err = worker.communicate(timeout=240)
    stopped_after = time.monotonic() - signalled
    assert worker.returncode == 130, err
    assert "Interrupted while encoding texts" in err and "kept in the cache" in err and "Traceback" not in err
    shards = list((root / "cache").rglob("shard_*.safetensors"))
    assert shards, "what was encoded before the stop was not cached"
    from safetensors.torch import load_file

    cached = sum(len(load_file(str(shard))["hashes"]) for shard in shards)
    assert 0 < cached < len(frame)  # stopped part-way, not after encoding everything
    assert stopped_after < 30, stopped_after  # one block (256 texts), not the rest of the pass
    assert not (root / "best_trials").exists()


def test_a_second_signal_stops_a_plain_run_at_once_however_soon_it_comes():
    request = StopRequest(under_torchrun=False)
    request._handle(signal.SIGINT, None)
    assert request.requested
    with pytest.raises(Interrupted, match="Interrupted again"):
        request._handle(signal.SIGINT, None)  # a person pressing twice, microseconds apart


def test_under_torchrun_only_a_forwarded_copy_within_the_window_is_ignored():
    request = StopRequest(under_torchrun=True)
    request._handle(signal.SIGINT, None)
    request._handle(signal.SIGINT, None)  # torchrun's forwarded copy of the same Ctrl-C
    request._first_at -= StopRequest.FORWARD_WINDOW_S + 0.01
    with pytest.raises(Interrupted):
        request._handle(signal.SIGINT, None)


# ---------------------------------------------------------------- this round's own battery


@pytest.mark.parametrize(("separator", "name"), [(";", "';'"), ("\t", "'\\t'")])
def test_a_file_separated_by_semicolons_or_tabs_is_named_as_such(cli, trained_model, tmp_path, separator, name):
    data = tmp_path / "semi.csv"
    data.write_text(f"text{separator}category\nhello there{separator}billing\n")
    code, _, err = cli("predict", "--output-root", trained_model, "--data-file", data, "--output-file", "s.csv")
    assert code == 2 and f"looks separated by {name}" in " ".join(err.split()) and "comma-separated" in err


def test_header_cells_with_spaces_are_shown_quoted(cli, trained_model, tmp_path):
    data = tmp_path / "spaces.csv"
    data.write_text(" text , category \nhello,billing\n")
    code, _, err = cli("predict", "--output-root", trained_model, "--data-file", data, "--output-file", "s.csv")
    assert code == 2 and "' text '" in err


def test_a_device_as_config_or_checkpoint_is_not_called_missing(cli, tmp_path):
    code, _, err = cli("config", "validate", "--config", "/dev/zero")
    assert code == 2 and "not a regular file" in err and "does not exist" not in err
    code, _, err = cli("inspect", "--output-root", tmp_path, "--best-model", "/dev/null")
    assert code == 2 and "not a regular file" in err
    code, _, err = cli("inspect", "--output-root", tmp_path, "--best-model", tmp_path)
    assert code == 2 and "is a folder" in err


@pytest.mark.slow
def test_train_at_verbosity_2_reports_the_seconds_of_each_stage(cli, threads_small, tmp_path):
    code, out, err = cli("train", "--output-root", tmp_path / "t", "--data-file", threads_small, "--max-seq-len", "128",
                         "--num-epochs", "2", "--verbosity", "2")  # fmt: skip
    assert code == 0, err
    table = out[out.index("Time per stage") :]
    for stage in (
        "Checking and splitting data",
        "Preparing encoder",
        "Encoding texts",
        "Training",
        "Scoring and saving",
    ):
        assert re.search(rf"{stage}\s*│\s*\d+\.\d\d", table), stage
    assert re.search(r"all stages\s*│\s*\d+\.\d\d", table)
