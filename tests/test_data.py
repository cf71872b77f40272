"""Data checks: every bad case gives one clear sentence and exit code 2; splits never leak."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import SMS, read_csv

from bertcls.config.settings import DataSection
from bertcls.data.labelled import Splits, check_labelled, read_labelled_csv
from bertcls.runtime.errors import DataError
from bertcls.task import SingleLabel


def rows(n_per_class: int = 4, classes=("a", "b", "c")) -> list[tuple[str, str]]:
    return [(f"text {label} number {i}", label) for label in classes for i in range(n_per_class)]


def write_csv(path: Path, data: list[tuple[str, str]], header=("text", "category")) -> Path:
    pd.DataFrame(data, columns=list(header)).to_csv(path, index=False)
    return path


def train_exit(cli, data_file: Path, *extra: str):
    return cli("train", "--data-file", data_file, "--output-root", "out", "--verbosity", "0", *extra)


def test_missing_column_lists_present_columns(cli, tmp_path):
    path = write_csv(tmp_path / "d.csv", rows(), header=("body", "category"))
    code, _, err = train_exit(cli, path)
    assert code == 2 and "no column 'text'" in err and "'body', 'category'" in err and "Traceback" not in err


def test_undecodable_bytes_name_row_and_option(cli, tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,category\nfine text,a\ncaf\xe9 au lait,b\n")
    code, _, err = train_exit(cli, path)
    assert code == 2 and "line 3" in err and "--encoding" in err


def test_latin1_encoding_option_reads_the_file(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,category\ncafé,a\n".encode("latin-1"))
    frame = read_labelled_csv(path, DataSection(encoding="latin-1"))
    assert frame.text[0] == "café"


def test_empty_text_or_label_reports_rows(cli, tmp_path):
    data = rows() + [("   ", "a"), ("lonely text", "")]
    path = write_csv(tmp_path / "d.csv", data)
    code, _, err = train_exit(cli, path)
    assert code == 2 and "2 row(s)" in err and "14, 15" in err and "on_bad_rows" in err


def test_drop_mode_drops_and_reports():
    frame = pd.DataFrame(rows() + [("", "a")], columns=["text", "category"])
    kept, report = check_labelled(frame, DataSection(on_bad_rows="drop"), "d.csv", SINGLE_LABEL)
    assert len(kept) == 12 and report.dropped_rows == [14] and "Dropped 1 row" in report.warnings[0]


def test_fewer_than_two_classes(cli, tmp_path):
    path = write_csv(tmp_path / "d.csv", rows(classes=("only",)))
    code, _, err = train_exit(cli, path)
    assert code == 2 and "at least 2" in err


def test_class_too_small_to_split(cli, tmp_path):
    path = write_csv(tmp_path / "d.csv", rows() + [("rare one", "rare"), ("rare two", "rare")])
    code, _, err = train_exit(cli, path)
    assert code == 2 and "'rare' (2)" in err and "too few to split" in err


def test_conflicting_labels(cli, tmp_path):
    path = write_csv(tmp_path / "d.csv", rows() + [("text a number 0", "b")])
    code, _, err = train_exit(cli, path)
    assert code == 2 and "different labels" in err
    assert "CSV lines 2, 14" in err and "--on-conflicting-labels" in err and len(err.strip().splitlines()) == 1
    code, _, err = train_exit(cli, path, "--on-conflicting-labels", "union")
    assert code == 2 and "does not apply to single-label data" in err


SINGLE_LABEL = SingleLabel()
CONFLICTED = rows() + [("text a number 0", "b"), ("text a number 0", "a"), ("text b number 1", "c")]


def test_conflicting_labels_dropped_with_a_count():
    frame = pd.DataFrame(CONFLICTED, columns=["text", "category"])
    kept, report = check_labelled(frame, DataSection(on_conflicting_labels="drop"), "d.csv", SINGLE_LABEL)
    assert len(kept) == len(frame) - 5 and not kept.text.isin(["text a number 0", "text b number 1"]).any()
    assert any("Dropped 5 row(s) of 2 text(s)" in w for w in report.warnings)


def test_conflicting_labels_take_the_majority_and_a_tie_names_its_lines():
    frame = pd.DataFrame(CONFLICTED[:-1], columns=["text", "category"])
    kept, report = check_labelled(frame, DataSection(on_conflicting_labels="majority"), "d.csv", SINGLE_LABEL)
    assert set(kept[kept.text == "text a number 0"].category) == {"a"} and len(kept) == len(frame)
    assert any("Gave 1 row(s) of 1 text(s)" in w and "majority" in w for w in report.warnings)
    tied = pd.DataFrame(CONFLICTED, columns=["text", "category"])
    with pytest.raises(DataError, match=r"'text b number 1' has no majority label \(CSV lines 7, 16\)"):
        check_labelled(tied, DataSection(on_conflicting_labels="majority"), "d.csv", SINGLE_LABEL)


def test_exact_duplicates_are_counted_and_kept():
    frame = pd.DataFrame(rows() + [("text a number 0", "a")] * 2, columns=["text", "category"])
    kept, report = check_labelled(frame, DataSection(), "d.csv", SINGLE_LABEL)
    assert report.duplicate_rows == 2 and len(kept) == 14 and "2 exact duplicate" in report.warnings[0]


def test_na_and_none_stay_labels(tmp_path):
    path = write_csv(tmp_path / "d.csv", rows(classes=("NA", "None", "null")))
    frame = read_labelled_csv(path, DataSection())
    assert set(frame.category) == {"NA", "None", "null"}
    kept, report = check_labelled(frame, DataSection(), "d.csv", SINGLE_LABEL)
    assert report.class_counts == {"NA": 4, "None": 4, "null": 4}


def test_missing_data_file_exit_2(cli, tmp_path):
    code, _, err = train_exit(cli, tmp_path / "absent.csv")
    assert code == 2 and "absent.csv" in err


def test_relative_path_resolves_under_output_root_data(tmp_path):
    from bertcls.data.labelled import resolve_data_path

    (tmp_path / "out" / "data").mkdir(parents=True)
    write_csv(tmp_path / "out" / "data" / "x.csv", rows())
    assert resolve_data_path("x.csv", tmp_path / "out") == tmp_path / "out" / "data" / "x.csv"


def test_sms_split_has_no_text_in_two_splits():
    frame = read_csv(SMS)
    assert frame.text.duplicated().sum() > 50  # the data really has duplicates
    splits = Splits(**SINGLE_LABEL.split(frame, DataSection(), seed=0))
    seen = [set(part.text) for _, part in splits.items()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(p) for _, p in splits.items()) == len(frame)
    shares = splits.train.category.value_counts(normalize=True) - frame.category.value_counts(normalize=True)
    assert shares.abs().max() < 0.02  # stratified


def test_bad_data_does_not_clobber_existing_model(cli, tmp_path):
    model = tmp_path / "out" / "best_trials" / "best_model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"previous model")
    path = write_csv(tmp_path / "d.csv", rows(classes=("only",)))
    code, _, _ = train_exit(cli, path)
    assert code == 2 and model.read_bytes() == b"previous model"


def test_a_policy_for_the_other_task_is_refused_even_without_conflicts():
    frame = pd.DataFrame(rows(), columns=["text", "category"])
    with pytest.raises(DataError, match="union does not apply to single-label data"):
        check_labelled(frame, DataSection(on_conflicting_labels="union"), "d.csv", SINGLE_LABEL)
