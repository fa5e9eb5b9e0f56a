"""Replaying a forward pass from CUDA graphs: one launch instead of hundreds for short clips, whose encode is
bound by kernel launches rather than by the GPU's arithmetic (BENCHMARKS.md, section 9)."""
from __future__ import annotations

from typing import Callable

import torch


class CudaGraphed:
    """fn(x) replayed from a CUDA graph captured the first time each input shape is seen.

    For inference only: without grad, on CUDA tensors, with weights that do not change between calls. Other
    calls (CPU tensors, grad enabled, more than `max_shapes` shapes) run fn directly. Each captured shape keeps
    its input, output and intermediate buffers alive, so give it the few batch shapes a job repeats (the last
    batch of a run is usually the odd one out)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], max_shapes: int = 4):
        self.fn = fn
        self.max_shapes = max_shapes
        self._graphs: dict[tuple, tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda or torch.is_grad_enabled():
            return self.fn(x)
        key = (tuple(x.shape), x.dtype, x.device, torch.is_autocast_enabled("cuda"))
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_shapes:
                return self.fn(x)
            entry = self._graphs[key] = self._capture(x)
        static_in, graph, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor):
        static_in = x.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # compile every Triton kernel and settle the allocator before capturing
            for _ in range(2):
                self.fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Autocast's cast cache would hand the graph tensors made outside it: capture without the cache.
        cast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False,
                              enabled=torch.is_autocast_enabled("cuda"))
        with cast, torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        return static_in, graph, static_out
