"""Errors the index raises, each with a message that says what to do next."""
from __future__ import annotations

from retrieval.errors import UsageError, VmrError  # noqa: F401 (UsageError: also raised by the index)


class IndexMissingError(VmrError, FileNotFoundError):
    """No index in the given folder (never built, or the path is wrong)."""


class IndexCorruptError(VmrError, RuntimeError):
    """An index file cannot be read or disagrees with the metadata; nothing was overwritten."""


class ModelMismatchError(VmrError, ValueError):
    """The model at hand is not the one the index was built with: its embeddings would not be comparable."""

    def __init__(self, index_model: str, other_model: str, what: str = "this model"):
        self.index_model, self.other_model = index_model, other_model
        super().__init__(
            f"model mismatch: the index was built with model {index_model}, but {what} is model "
            f"{other_model}; embeddings of different models are not comparable. Use the index's model "
            f"or build a new index with `vmr index build`.")


class IndexBusyError(VmrError, RuntimeError):
    """Another process holds the index's writer lock."""


class QueryVideoError(VmrError, ValueError):
    """A clip given as a query cannot be used: missing, undecodable, or a START-END outside the video."""
