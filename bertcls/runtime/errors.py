"""User-facing errors: the CLI turns these into one sentence and exit code 2."""


class BertclsError(Exception):
    """A problem with the user's input, files or configuration (not a bug)."""


class ConfigError(BertclsError):
    """The configuration is invalid; ``problems`` lists every issue found."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []


class DataError(BertclsError):
    """The input data failed a check."""


class CheckpointError(BertclsError):
    """A checkpoint is missing, corrupt, unsafe or incompatible."""


class TrainingDiverged(BertclsError):
    """The training loss became infinite or NaN: the weights are no longer numbers."""
