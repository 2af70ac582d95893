"""The one exception family that analysis code raises for expected problems."""

from __future__ import annotations


class GradcheckError(Exception):
    """Base class for every expected problem (bad input, bad config); the CLI turns it into exit 2."""


class UnreadableFileError(GradcheckError):
    """A snapshot file that cannot be read; the message names the file and the problem."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem

    def __reduce__(self) -> tuple[type[UnreadableFileError], tuple[str, str]]:
        """Pickle by (path, problem), so the error crosses from a worker process intact."""
        return type(self), (self.path, self.problem)


class FileChangedError(UnreadableFileError):
    """A file replaced or rewritten while it was being read: its parts may come from two versions."""


class RunError(GradcheckError):
    """A run directory that cannot be analysed as a whole (missing, empty, ambiguous)."""


class ConfigError(GradcheckError):
    """A configuration file or option with an unknown key, a wrong type or an impossible value."""
