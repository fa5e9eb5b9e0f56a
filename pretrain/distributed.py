"""Processes: this rank's place, joining the group, and the collectives training uses (no-ops in one process)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def set_single_process_env() -> None:
    """Plain `python pretrain/run.py`: act as rank 0 of 1 (DeepSpeed otherwise goes looking for MPI)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    import socket

    with socket.socket() as s:  # a free port, so parallel runs and tests don't collide on 29500
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))


def init_distributed(kind: str) -> DistInfo:
    """Join (or create) the process group from RANK/WORLD_SIZE/LOCAL_RANK; NCCL on CUDA, gloo on CPU."""
    set_single_process_env()
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        if kind == "deepspeed":
            import deepspeed

            if not cuda and os.environ.get("VMR_DS_SHM_COMM") != "1":
                # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (~1-2 min of C++ on first use);
                # gloo does the same job for training, so mark the op unavailable (DeepSpeed keeps this dict for
                # such edits). VMR_DS_SHM_COMM=1 keeps it.
                import deepspeed.ops

                deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
            deepspeed.init_distributed(dist_backend=backend, verbose=False)
        elif world > 1:
            dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, device)


def _group_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if _group_size() > 1:
        dist.barrier()


def all_true(flag: bool, device) -> bool:
    """True on every rank when it is true on all of them (a collective, as all below: every rank must call it)."""
    if _group_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def any_true(flag: bool, device) -> bool:
    """True on every rank when it is true on any (one rank's stop signal stops all at the same step)."""
    return not all_true(not flag, device)


def all_sum(value: float, device) -> float:
    if _group_size() == 1:
        return value
    t = torch.tensor([float(value)], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def all_gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (picklable objects)."""
    if _group_size() == 1:
        return [obj]
    out = [None] * _group_size()
    dist.all_gather_object(out, obj)
    return out
