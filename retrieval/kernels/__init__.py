"""Triton kernels for the bidirectional Mamba block, each beside its float64 reference (`*_fn` / `*_ref`).

Triton is imported only when a kernel runs, so `import retrieval` works without it; on CPU the kernels
run under Triton's interpreter (TRITON_INTERPRET=1, set before the first kernel call).
"""
from .biconv import biconv1d_fn, biconv1d_ref
from .bimamba_scan import bimamba_scan_fn, bimamba_scan_ref
from .support import triton_available, triton_unavailable_reason

__all__ = ["biconv1d_fn", "biconv1d_ref", "bimamba_scan_fn", "bimamba_scan_ref", "triton_available",
           "triton_unavailable_reason"]
