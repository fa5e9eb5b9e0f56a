"""Shared media helpers: video probing/decoding (PyAV, imported lazily), frame sampling, transforms, annotation loaders."""
