"""Can the Triton kernels run here, and if not, what to do about it; and the grid arithmetic their launchers share."""
from __future__ import annotations

import functools
import os

import torch


def interpreting() -> bool:
    """True when Triton's interpreter runs kernels on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # a broken install raises more than ImportError
        return f"{type(e).__name__}: {e}"
    return None


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when the Triton kernels can run on tensors of this device, else why not and what to do."""
    err = _triton_import_error()
    if err is not None:
        return (f"Triton is not importable ({err}); install it with `pip install triton` (it ships with "
                f"CUDA builds of torch), or use backend='torch'")
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    return (f"the Triton kernels need CUDA tensors, got device {device}; move the model to a GPU, "
            f"set TRITON_INTERPRET=1 to run them (slowly) on CPU, or use backend='torch'")


def triton_available(device: torch.device | str = "cuda") -> bool:
    return triton_unavailable_reason(torch.device(device)) is None


def triton_cdiv(a: int, b: int) -> int:
    """ceil(a / b): how many blocks of b cover a (grid sizes)."""
    return -(-a // b)
