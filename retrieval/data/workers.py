"""How decode workers start: from a fork server, never as a fork of the calling process.

A fork copies the parent's locks but only the thread that forks. A worker forked while another thread holds a
lock it later needs (tqdm's monitor, an OpenMP pool, FFmpeg's threads, a Gradio server, or the embedder's own
prefetch thread, which is where the index's loader starts its workers) waits on it forever; one CI run hung
that way. The fork server is a fresh single-threaded process, so its forks are safe. Python 3.14 made it the
default on Linux for this reason.

As with spawn, a script that starts decode workers needs the `if __name__ == "__main__":` guard. Training's
loader (pretrain/data.py) still forks: it starts from the main thread, and it restarts its workers every epoch,
where the fork server's start (~1.3 s, then the dataset's imports in each worker) made the resume tests 4x slower.
"""
from __future__ import annotations

import multiprocessing as mp
from multiprocessing.context import BaseContext

# Imported once by the fork server, so each worker starts in milliseconds instead of importing torch again.
PRELOAD = ("torch", "retrieval.data.video", "retrieval.data.transforms")


def decode_worker_context() -> BaseContext | None:
    """`multiprocessing_context` for a DataLoader of decode workers (None where there is no fork server:
    Windows, whose default, spawn, is already safe)."""
    if "forkserver" not in mp.get_all_start_methods():
        return None
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))  # read when the server starts; later calls change nothing
    return context
