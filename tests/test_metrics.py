"""The numpy metrics equal scikit-learn's."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from bertcls.task.metrics import accuracy, macro_f1


def test_equal_to_sklearn_including_absent_classes_and_unknown_labels():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true = rng.integers(-1, 5, size=50)  # -1: a label the model never saw
        y_pred = rng.integers(0, 4, size=50)  # class 4 is never predicted
        assert accuracy(y_true, y_pred) == accuracy_score(y_true, y_pred)
        expected = f1_score(y_true, y_pred, average="macro", labels=list(range(5)), zero_division=0)
        assert abs(macro_f1(y_true, y_pred, 5) - expected) < 1e-12
