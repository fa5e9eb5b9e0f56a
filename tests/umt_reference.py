"""Deterministic weights in the release's multimodal (UMT_VIDEOMAMBA) checkpoint layout, shared by the parity test
and scripts/make_umt_parity_fixture.py, which stores the release's outputs for these weights."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "umt_parity"

_NORM_SUFFIXES = ("LayerNorm.weight", "norm.weight", "pool_norm.weight")
# Tied in BertForMaskedLM: the MLM decoder shares the word embeddings and the prediction bias.
_TIES = {"text_encoder.cls.predictions.decoder.weight": "text_encoder.bert.embeddings.word_embeddings.weight",
         "text_encoder.cls.predictions.decoder.bias": "text_encoder.cls.predictions.bias"}


def _value(key: str, shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """One tensor, from numpy's legacy RandomState (its streams are frozen across numpy versions)."""
    if dtype == "int64":  # position_ids
        return np.broadcast_to(np.arange(shape[-1], dtype=np.int64), shape).copy()
    rng = np.random.RandomState((zlib.crc32(key.encode()) ^ seed) & 0xFFFFFFFF)
    noise = rng.standard_normal(shape)
    if key.endswith(("A_log", "A_b_log")):  # S4D-real init + noise: A = -exp(A_log) stays well conditioned
        v = np.log(np.arange(1, shape[-1] + 1))[None, :] + 0.1 * noise
    elif key.endswith((".D", ".D_b")):
        v = 1.0 + 0.1 * noise
    elif key.endswith(("dt_proj.bias", "dt_proj_b.bias")):  # softplus(bias) in [1e-3, 1e-1], as the release's init
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), shape))
        v = dt + np.log(-np.expm1(-dt))
    elif key.endswith(_NORM_SUFFIXES):
        v = 1.0 + 0.1 * noise
    elif key == "temp":
        v = np.full(shape, 0.07)
    elif key.endswith(("cls_token", "pos_embed", "temporal_pos_embedding")) or "embeddings." in key:
        v = 0.5 * noise
    elif key.endswith(".bias") or len(shape) < 2:
        v = 0.05 * noise
    else:  # weights: unit-variance outputs, so embeddings of different inputs differ clearly
        v = noise / np.sqrt(float(np.prod(shape[1:])))
    return v.astype(np.float32)


def release_weights(spec: list[dict], seed: int = 0) -> dict[str, torch.Tensor]:
    """spec: [{"key", "shape", "dtype"}] (spec.json's "keys") -> state dict with the release's names, float32."""
    out = {s["key"]: torch.from_numpy(_value(s["key"], tuple(s["shape"]), s["dtype"], seed)) for s in spec}
    for key, source in _TIES.items():
        if key in out and source in out:
            out[key] = out[source].clone()
    return out


def load_spec() -> dict:
    return json.loads((FIXTURE / "spec.json").read_text())


def release_inputs(spec: dict) -> torch.Tensor:
    """The fixture's videos (B, 3, T, H, W), ImageNet-normalised units, float32."""
    v = spec["video"]
    rng = np.random.RandomState(v["seed"])
    return torch.from_numpy(rng.standard_normal((v["count"], 3, v["frames"], v["size"], v["size"])).astype(np.float32))
