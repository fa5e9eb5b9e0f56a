"""Decode workers start from a fork server: a lock another thread holds in the parent is not theirs to wait on."""
from __future__ import annotations

import threading

import pytest
import torch

from retrieval.data.workers import media_worker_context

# Held by a parent thread while the loader starts; a forked worker inherits it locked.
PARENT_LOCK = threading.Lock()


class LockProbe(torch.utils.data.IterableDataset):
    """Yields whether the worker could take PARENT_LOCK (a short timeout stands in for a deadlock)."""

    def __iter__(self):
        got = PARENT_LOCK.acquire(timeout=2.0)
        if got:
            PARENT_LOCK.release()
        yield got


def _probe(context) -> list[bool]:
    loader = torch.utils.data.DataLoader(LockProbe(), batch_size=None, num_workers=1, multiprocessing_context=context)
    with PARENT_LOCK:  # taken here for brevity; a fork copies the lock's state whichever thread holds it
        return list(loader)


def test_a_forked_worker_inherits_a_held_lock():
    """The hazard itself, so the test below can fail: a plain fork sees the lock taken."""
    assert _probe("fork") == [False]


def test_decode_workers_do_not_inherit_the_parents_locks():
    context = media_worker_context()
    if context is None:
        pytest.skip("no fork server on this platform (spawn, the default, is safe)")
    assert context.get_start_method() == "forkserver"
    assert _probe(context) == [True]
