"""Session set-up: on hosts without a GPU, Triton kernels run under Triton's interpreter.

TRITON_INTERPRET must be set before the first `import triton` (some test dependencies import it),
so it is set here rather than in the kernel tests.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def single_process_env(monkeypatch):
    """No launcher variables during the test (pretrain/run.py sets its own), and whatever it sets is undone after."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(var, "")  # records the old state for teardown
        monkeypatch.delenv(var)
