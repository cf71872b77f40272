"""The classification task: single-label (``model.task: multiclass``) or multi-label (``model.task: multilabel``).

This is where a task name becomes a :class:`Task`; everything else asks the task object.
"""

from __future__ import annotations

from bertcls.task.base import DecisionRule, PredictionColumns, Task, TaskName
from bertcls.task.multi import MultiLabel
from bertcls.task.single import SingleLabel

TASKS: dict[str, Task] = {task.name: task for task in (SingleLabel(), MultiLabel())}


def task_for(name: str) -> Task:
    """The task a configuration or checkpoint names."""
    return TASKS[name]


__all__ = ["TASKS", "DecisionRule", "MultiLabel", "PredictionColumns", "SingleLabel", "Task", "TaskName", "task_for"]
