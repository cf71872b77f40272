"""Experiment tracking: MLflow runs and TensorBoard event files, written by a tracking process beside the command.

Importing this package is cheap; :mod:`bertcls.tracking.session` starts the tracking process, which alone imports
mlflow and TensorBoard.
"""

from bertcls.tracking.records import RunSpec, TrackingRecord

__all__ = ["RunSpec", "TrackingRecord"]
