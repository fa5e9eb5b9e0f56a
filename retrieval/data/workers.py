"""How media worker processes start: from a fork server, never as a fork of the calling process.

A fork copies the parent's memory but only the thread that forks. A child that touches state another thread of
the parent was using can wait forever. CI hung twice with forked workers (2026-12-07): in an index build's decode
worker, and in the synthetic world's renderer, whose children waited forever inside FFmpeg's scaler as it freed
its thread pool (`pthread_cond_destroy`). The fork server is a fresh single-threaded process, so its forks are safe;
Python 3.14 made it the default on Linux for this reason.

As with spawn, a script that starts these workers needs the `if __name__ == "__main__":` guard. Training's loader
(pretrain/data.py) still forks: it restarts its workers every epoch, where the fork server's start (~1.3 s, then
each worker's imports) made the resume tests 4x slower; its parent decodes nothing, and the scaler runs on one
thread everywhere (`retrieval.data.video.one_thread`), so that fork has no FFmpeg thread pool to inherit.
"""
from __future__ import annotations

import multiprocessing as mp
from multiprocessing.context import BaseContext

# Imported once by the fork server, so each worker starts in milliseconds instead of importing torch again.
PRELOAD = ("torch", "retrieval.data.video", "retrieval.data.transforms")


def media_worker_context() -> BaseContext | None:
    """`multiprocessing_context` / `mp_context` for a DataLoader or process pool that decodes or encodes media
    (None where there is no fork server: Windows, whose default, spawn, is already safe)."""
    if "forkserver" not in mp.get_all_start_methods():
        return None
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))  # read when the server starts; later calls change nothing
    return context
