"""VmrError: the base of every error a user can fix; `vmr` and pretrain/run.py catch it (and OSError) once."""
from __future__ import annotations


class VmrError(Exception):
    """A bad input, setting or file, with a message that says what is wrong and what to do. Each subclass also
    keeps its builtin base (ValueError, RuntimeError, ...) so existing `except ValueError` callers still work."""


class UsageError(VmrError, ValueError):
    """An argument that cannot work as given (an empty query, k < 1, an odd frame size, conflicting options)."""
