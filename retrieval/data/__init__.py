"""Shared media helpers: video probing/decoding (PyAV, imported lazily), frame sampling, transforms, annotation loaders."""
from ..io import sha256_file  # noqa: F401 - the old home; index/evaluate.py imports it from here
