"""The exception tree of pytest-invariance.

Every error the plugin raises on bad input derives from :class:`InvarianceError` and
also from the matching builtin, so callers can catch either. Messages say what is
wrong and what to do next, in one line where possible.
"""
from __future__ import annotations

import warnings

try:  # pytest is always present when the plugin runs; the probes may be used without it.
    from pytest import PytestWarning as _WarningBase
except ImportError:  # pragma: no cover
    _WarningBase = UserWarning  # type: ignore[misc,assignment]


class InvarianceError(Exception):
    """Base class of every pytest-invariance error."""


class InvalidParameterError(InvarianceError, ValueError, TypeError):
    """A parameter or option has a value outside its documented domain."""


class NotFittedError(InvarianceError, ValueError, AttributeError):
    """A probe was used before ``fit``."""


class ModelLoadError(InvarianceError, ValueError):
    """A model file is missing, corrupt, or of an unsupported kind."""


class LayerNotFoundError(InvarianceError, KeyError):
    """The requested layer does not exist; the message lists the real names."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


class InputShapeError(InvarianceError, ValueError):
    """Images do not fit the model's declared input."""


class EmbeddingError(InvarianceError, ValueError):
    """An embedding contains NaN/Inf or has the wrong shape."""


class DataError(InvarianceError, ValueError):
    """A dataset or label file is missing, unreadable or misaligned."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset is not installed or not under the data directory."""


class InconclusiveError(InvarianceError, ValueError):
    """A gate cannot decide: the figure's CI is wider than the gap between chance and the
    threshold (the test split is too small); the test is an ERROR, neither PASS nor FAIL."""


# How each backend says it could not get memory: torch ("CUDA out of memory", "DefaultCPUAllocator:
# can't allocate memory"), onnxruntime ("Failed to allocate memory for requested buffer"), the C++
# runtime (std::bad_alloc), cuBLAS/cuDNN (CUBLAS_STATUS_ALLOC_FAILED), numpy ("Unable to allocate").
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate memory",
                  "bad_alloc", "alloc_failed", "unable to allocate", "memoryallocation")


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error it was raised from) says memory ran out: a MemoryError,
    torch's OutOfMemoryError, or a backend's allocation failure in its message."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
            return True
        text = str(e).lower()
        if any(s in text for s in _OUT_OF_MEMORY):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return False


class InvarianceWarning(_WarningBase):
    """Warnings emitted by pytest-invariance."""


def warn(message: str) -> None:
    warnings.warn(message, InvarianceWarning, stacklevel=2)


class StudyError(InvarianceError, RuntimeError):
    """A study (or one of its embeddings) could not run; raised once per study and test.

    ``first`` is True for the test that met the failure; later tests of the same study
    get a short StudyError that refers back to it (``first_nodeid``) instead of re-running
    the study or repeating its traceback. ``cause`` is the original exception.
    """

    def __init__(self, message: str, *, cause: BaseException | None = None, first: bool = True,
                 study: str = "") -> None:
        super().__init__(message)
        self.cause, self.first, self.study = cause, first, study
        self.first_nodeid: str | None = None  # set by the plugin when the first test reports it

    def again(self) -> "StudyError":
        """The short error of a later test of the same study (one met through another
        study's remembered failure still names the test that reported it first)."""
        origin = getattr(self, "origin", self)
        where = f" (reported at {origin.first_nodeid})" if origin.first_nodeid else ""
        kind = type(self.cause).__name__ if self.cause is not None else "error"
        short = StudyError(f"{self.study}{where}: {kind}; see that error",
                           cause=self.cause, first=False, study=self.study)
        short.origin = origin  # type: ignore[attr-defined]
        return short
