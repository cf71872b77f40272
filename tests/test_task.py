"""The task objects: one per kind of classification, each complete, and what differs between them lives in them."""

from __future__ import annotations

import typing

import numpy as np
import pandas as pd
import pytest
import torch

from bertcls.config.settings import DataSection, ModelSection
from bertcls.evaluation.runner import REPORTS
from bertcls.task import TASKS, DecisionRule, MultiLabel, SingleLabel, task_for
from bertcls.task.calibration import CalibrationRecord
from bertcls.task.metrics import categorical_nll, label_indices


def test_every_configurable_task_has_an_object_and_an_evaluation_report():
    names = set(typing.get_args(ModelSection.model_fields["task"].annotation))
    assert set(TASKS) == names == set(REPORTS)
    assert task_for("multiclass") == SingleLabel() and task_for("multilabel") == MultiLabel()
    assert SingleLabel() != MultiLabel() and len({SingleLabel(), SingleLabel(), MultiLabel()}) == 2


def test_single_label_decides_by_argmax_and_multi_label_by_thresholds_and_min_labels():
    probs = np.array([[0.2, 0.7, 0.1], [0.4, 0.35, 0.25]])
    assert SingleLabel().decide(probs, DecisionRule()).tolist() == [1, 0]
    given = MultiLabel().decide(probs, DecisionRule(thresholds=(0.3, 0.8, 0.2)))
    assert given.tolist() == [[False, False, False], [True, False, True]]
    at_least_one = MultiLabel().decide(probs, DecisionRule(thresholds=(0.3, 0.8, 0.2), min_labels=1))
    assert at_least_one.tolist() == [[False, True, False], [True, False, True]]


def test_probabilities_softmax_or_sigmoid_under_the_temperature():
    logits = torch.tensor([[2.0, 0.0], [0.0, -1.0]])
    single = SingleLabel().probabilities(logits, 2.0)
    torch.testing.assert_close(single, torch.softmax(logits / 2.0, dim=-1))
    multi = MultiLabel().probabilities(logits, np.array([2.0, 0.5], dtype=np.float32))
    torch.testing.assert_close(multi, torch.sigmoid(logits / torch.tensor([2.0, 0.5])))


def test_a_calibration_record_gives_the_rule_it_describes():
    single = DecisionRule.calibrated(CalibrationRecord(method="temperature", temperature=1.7), min_labels=0)
    assert single.temperature == 1.7 and single.thresholds is None
    record = CalibrationRecord(method="temperature", temperature=1.2, temperatures=[1.0, 1.44], thresholds=[0.3, 0.6])
    multi = DecisionRule.calibrated(record, min_labels=1)
    np.testing.assert_allclose(multi.temperature, [1.0, 1.44])
    assert multi.thresholds == (0.3, 0.6) and multi.min_labels == 1


def test_encoding_refuses_labels_the_training_split_lacks():
    frame = pd.DataFrame({"text": ["a", "b"], "category": ["x", "z"], "labels": ["x|y", "w"]})
    with pytest.raises(Exception, match="'z'"):
        SingleLabel().encode(frame, DataSection(), ["x", "y"], "val")
    with pytest.raises(Exception, match="'w'"):
        MultiLabel().encode(frame, DataSection(label_column="labels"), ["x", "y"], "val")
    assert MultiLabel().encode(frame.iloc[:1], DataSection(label_column="labels"), ["x", "y"], "val").tolist() == [
        [1.0, 1.0]
    ]


def test_one_label_index_mapping_and_one_categorical_nll():
    assert label_indices(["b", "zz", "a"], ["a", "b"]).tolist() == [1, -1, 0]
    probs = np.array([[0.9, 0.1], [0.25, 0.75]])
    assert categorical_nll(probs, np.array([0, 1])) == pytest.approx(-(np.log(0.9) + np.log(0.75)) / 2)
    assert np.isnan(categorical_nll(probs[:0], np.array([], dtype=int)))
