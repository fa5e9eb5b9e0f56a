"""VideoMamba Retrieval models: the VideoMamba video encoder, text towers, the dual encoder and its losses.

Imports only torch, einops, numpy, pyyaml and safetensors; optional libraries load on first use.
"""
from .checkpoint import CheckpointError, load_retrieval_model, load_video_encoder
from .model import ModelCard, ModelConfig, VideoTextModel, create_model, load_model, save_model
from .umt import UMTConfig, UMTModel
from .videomamba import VideoMamba, VideoMambaConfig, create_video_encoder, list_video_encoders

__all__ = [
    "CheckpointError", "ModelCard", "ModelConfig", "UMTConfig", "UMTModel", "VideoMamba", "VideoMambaConfig",
    "VideoTextModel", "create_model", "create_video_encoder", "list_video_encoders", "load_model",
    "load_retrieval_model", "load_video_encoder", "save_model",
]
