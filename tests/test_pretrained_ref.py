"""Model folders that reference a text tower's untouched pretrained tensors instead of copying them."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("open_clip")

from safetensors.torch import load_file  # noqa: E402

from retrieval import create_model, load_model, save_model  # noqa: E402
from retrieval.pretrained_ref import PretrainedRefError  # noqa: E402

WORDS = ["a", "red", "blue", "circle", "square", "moves", "left", "right", "grows", "shrinks"]


@pytest.fixture()
def bert_folder(tmp_path):
    """A tiny local BERT folder (config, safetensors weights, WordPiece tokenizer) standing in for MiniLM."""
    folder = tmp_path / "tiny_bert"
    folder.mkdir()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def _trained_model(bert_folder):
    cfg = {"video": {"name": "videomamba_tiny", "encoder": {"embed_dim": 32, "depth": 1, "img_size": 16,
                                                            "num_frames": 2}},
           "text": {"kind": "hf", "hf_folder": str(bert_folder), "context_length": 16,
                    "freeze": "all_but_last_N", "unfrozen_layers": 1},
           "embed_dim": 16}
    model = create_model(cfg).eval()
    with torch.no_grad():  # stand-in for training: every trainable tensor moves, the frozen ones stay
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    return model


def test_reference_folder_is_smaller_and_reloads_bitwise(bert_folder, tmp_path):
    model = _trained_model(bert_folder)
    full = save_model(model, tmp_path / "full")
    ref = save_model(model, tmp_path / "ref", reference_pretrained=True)
    kept = load_file(str(ref / "model.safetensors"))
    assert len(kept) < len(load_file(str(full / "model.safetensors")))
    assert not any(".embeddings." in k or ".layer.0." in k for k in kept)  # frozen: referenced
    assert any(".layer.1." in k for k in kept)  # trained: stored
    want = model.state_dict()
    got = load_model(ref).state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_changed_or_missing_source_is_refused(bert_folder, tmp_path):
    ref = save_model(_trained_model(bert_folder), tmp_path / "ref", reference_pretrained=True)
    weights = bert_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")  # another release of the source
    with pytest.raises(PretrainedRefError, match="sha256"):
        load_model(ref)
    weights.unlink()
    (bert_folder / "config.json").unlink()
    with pytest.raises(PretrainedRefError, match="not available"):
        load_model(ref)


def test_clip_towers_have_nothing_to_reference(tmp_path):
    cfg = {"video": {"name": "videomamba_tiny", "encoder": {"embed_dim": 32, "depth": 1, "img_size": 16,
                                                            "num_frames": 2}},
           "text": {"kind": "clip", "width": 32, "layers": 1, "heads": 2, "context_length": 16}, "embed_dim": 16}
    with pytest.raises(ValueError, match="Hugging Face"):
        save_model(create_model(cfg), tmp_path / "m", reference_pretrained=True)
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.tmp").exists()


def test_train_config_rejects_reference_export_for_clip_towers():
    from pretrain.config import ConfigError, load_train_config

    with pytest.raises(ConfigError, match="export_reference_pretrained"):
        load_train_config("configs/pretrain/smoke_cpu.yaml", ["run.export_reference_pretrained=true"])
