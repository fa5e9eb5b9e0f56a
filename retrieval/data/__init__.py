"""Shared media helpers: video probing/decoding (PyAV, imported lazily), frame sampling, transforms, annotation loaders."""
from ..io import fsync_dir, fsync_tree, sha256_file  # noqa: F401 - their old home, until every caller imports retrieval.io
