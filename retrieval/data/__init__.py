"""Shared media helpers: video probing/decoding (PyAV, lazily imported), frame sampling, transforms, annotations."""
