"""VideoMamba Retrieval models: the VideoMamba video encoder, text towers, the dual encoder and its losses.

Imports only torch, einops, numpy, pyyaml and safetensors; optional libraries load on first use. The names below
load on first access too, so torch-free parts (retrieval.errors, retrieval.data.annotations) import instantly.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CheckpointError": "checkpoint", "load_retrieval_model": "checkpoint", "load_video_encoder": "checkpoint",
    "ModelCard": "model", "ModelConfig": "model", "VideoTextModel": "model", "create_model": "model",
    "load_model": "model", "save_model": "model", "UMTConfig": "umt", "UMTModel": "umt",
    "VideoMamba": "videomamba", "VideoMambaConfig": "videomamba", "create_video_encoder": "videomamba",
    "list_video_encoders": "videomamba",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
