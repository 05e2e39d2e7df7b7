"""Errors that name the offending file or parameter and say what was expected."""


class TpruneError(Exception):
    """Base class: every error the package raises on bad input."""


class AudioError(TpruneError):
    """An audio file could not be read or holds unusable samples."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DatasetError(TpruneError):
    """A dataset folder does not match any known layout, or a split is impossible."""


class CheckpointError(TpruneError):
    """A checkpoint does not fit the model (missing/unexpected keys, shapes)."""


class ConfigError(TpruneError, ValueError):
    """A parameter is out of its valid range."""


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """ "1 file", "3 files": a count with its noun in the right number (``plural`` when not noun + "s")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
