"""Session set-up: on hosts without a GPU, Triton kernels run under Triton's interpreter.

TRITON_INTERPRET must be set before the first `import triton` (some test dependencies import it),
so it is set here rather than in the kernel tests.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
