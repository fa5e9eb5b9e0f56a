"""Write tests/fixtures/umt_parity/: the release's own outputs (UMT_VIDEOMAMBA, CPU, float32) for deterministic weights.

Run once, by hand, with a checkout (or git mirror) of OpenGVLab/VideoMamba; CI only reads the stored fixture.
Nothing of the release is copied into this repository: its modules are imported from the given folder.

    python scripts/make_umt_parity_fixture.py --release /path/to/VideoMamba          # a checkout
    python scripts/make_umt_parity_fixture.py --release-git-dir /path/to/mirror.git  # or a bare mirror (HEAD)

Needs, besides this project's environment: the release's Python dependencies that import on CPU, i.e.
transformers 4.x (its xbert.py predates transformers 5; 4.36.2 works) and timm (0.9.16 works), e.g.
`pip install --target /tmp/relpkgs --no-deps transformers==4.36.2 tokenizers==0.15.2 huggingface_hub==0.20.3
timm==0.9.16` and `PYTHONPATH=/tmp/relpkgs:$PWD`. The mamba CUDA ops are replaced by a plain sequential scan
(below); BERT gets random weights instead of `from_pretrained`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from umt_reference import FIXTURE, release_inputs, release_weights  # noqa: E402

# The small config: every key of the real layout, tiny sizes (vocab stays 30522 so the real vocab.txt tokenises).
VISION = dict(img_size=48, patch_size=16, depth=2, embed_dim=64, num_frames=8)
BERT = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256,
            max_position_embeddings=64, fusion_layer=2)
EMBED_DIM = 512
NUM_VIDEOS = 12
K_TEST = 5
MAX_TXT_L = 32
CAPTIONS = [  # one per video, plus two more for video 0 (v2t then has several correct texts)
    "A man is playing the guitar on stage.", "a woman cooks pasta in a small kitchen", "Two dogs run across a field!",
    "children play football (soccer) in the park", "A cat sleeps on a sofa; it's sunny.", "someone slices tomatoes",
    "a car drives down a mountain road at night", "people dance at a wedding party", "A chef explains a recipe: step 1",
    "the news anchor talks about the weather", "a boy rides a bike down the hill", "<person> opens a door slowly",
    "a guitarist performs live", "music on a stage with a crowd",
]
TEXT_TO_VIDEO = list(range(NUM_VIDEOS)) + [0, 0]


# --- shims for the CUDA-only pieces the release imports ------------------------------------------------------

def _scan(u, delta, A, B, C, D, z, delta_bias):
    """Sequential selective scan. u, delta, z: (b, d, l); A: (d, n); B, C: (b, 1, n, l) or (b, n, l) -> (b, d, l)."""
    if B.dim() == 4:
        B, C = B[:, 0], C[:, 0]
    u, delta = u.float(), delta.float()
    delta = F.softplus(delta + delta_bias[None, :, None].float())
    b, d, length = u.shape
    x = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(length):
        x = torch.exp(delta[:, :, t, None] * A) * x + (delta[:, :, t, None] * B[:, None, :, t]) * u[:, :, t, None]
        ys.append((x * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) + u * D[None, :, None]
    return y * F.silu(z.float())


def mamba_inner_fn_no_out_proj(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B=None, C=None,
                               D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None, delta_softplus=True,
                               checkpoint_lvl=1):
    length = xz.shape[-1]
    rank, n = delta_proj_weight.shape[1], A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, conv1d_weight, conv1d_bias, padding=conv1d_weight.shape[-1] - 1,
                        groups=x.shape[1])[..., :length])  # causal depthwise conv
    x_dbl = F.linear(x.transpose(1, 2).reshape(-1, x.shape[1]), x_proj_weight)  # (b l, rank + 2n)
    delta = (delta_proj_weight @ x_dbl[:, :rank].t()).reshape(-1, xz.shape[0], length).transpose(0, 1)
    Bm = x_dbl[:, rank:rank + n].reshape(xz.shape[0], length, n).transpose(1, 2)
    Cm = x_dbl[:, -n:].reshape(xz.shape[0], length, n).transpose(1, 2)
    return _scan(x, delta, A, Bm, Cm, D, z, delta_bias)


def rms_norm_fn(x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6, **_):
    if residual is not None:
        x = x + residual
    res = x.float() if residual_in_fp32 else x
    out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    if bias is not None:
        out = out + bias
    return (out, res) if prenorm else out


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.register_parameter("bias", None)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return rms_norm_fn(x, self.weight, None, residual, prenorm, residual_in_fp32, self.eps)


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__path__ = []  # a package, so submodules resolve
    sys.modules[name] = mod
    return mod


def _install_shims(release: Path) -> None:
    _module("mamba_ssm")
    _module("mamba_ssm.ops")
    _module("mamba_ssm.ops.selective_scan_interface", mamba_inner_fn_no_out_proj=mamba_inner_fn_no_out_proj,
            selective_scan_fn=None, mamba_inner_fn=None, bimamba_inner_fn=None)
    _module("mamba_ssm.ops.triton")
    _module("mamba_ssm.ops.triton.layernorm", RMSNorm=RMSNorm, rms_norm_fn=rms_norm_fn, layer_norm_fn=None)
    _module("causal_conv1d", causal_conv1d_fn=None, causal_conv1d_update=None)
    _module("mamba_ssm.modules")
    spec = importlib.util.spec_from_file_location("mamba_ssm.modules.mamba_simple",
                                                  release / "mamba/mamba_ssm/modules/mamba_simple.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    for name in ("deepspeed", "scipy", "scipy.interpolate"):  # imported at module level, unused here
        if importlib.util.find_spec(name.split(".")[0]) is None:
            _module(name, interpolate=None)
    video_mm = release / "videomamba/video_mm"
    sys.path.insert(0, str(video_mm))
    # Skip the packages' __init__.py (they import the ViT models, video decoders): stubs, submodules load as usual.
    for package in ("models", "dataset"):  # dataset/__init__.py needs decord/cv2: only dataset/utils.py is used
        _module(package).__path__ = [str(video_mm / package)]


def _release_config(bert_json: Path):
    from utils.easydict import EasyDict

    ve = dict(name="videomamba_middle", **VISION, drop_path_rate=0.0, ssm_cfg=None, norm_epsilon=1e-5,
              fused_add_norm=True, rms_norm=True, residual_in_fp32=True, bimamba=True, pool_type="cls+avg",
              kernel_size=1, ckpt_num_frame=8, use_checkpoint=False, checkpoint_num=0,
              clip_decoder_embed_dim=VISION["embed_dim"], clip_output_dim=512, clip_norm_type="l2",
              clip_return_layer=1, clip_student_return_interval=1, pretrained=None, clip_teacher="none",
              clip_img_size=224, clip_return_interval=1, video_mask_type="none", video_mask_ratio=0.0,
              video_double_mask_ratio=0.0, image_mask_type="none", image_mask_ratio=0.0,
              image_double_mask_ratio=0.0, keep_temporal=True)
    return EasyDict(dict(
        model=dict(model_cls="UMT_VIDEOMAMBA", vision_encoder=ve,
                   text_encoder=dict(name="bert_base", pretrained="unused", config=str(bert_json),
                                     d_model=BERT["hidden_size"], fusion_layer=BERT["fusion_layer"]),
                   multimodal=dict(enable=True), embed_dim=EMBED_DIM, temp=0.07),
        criterion=dict(loss_weight=dict(vtc=1.0, mlm=1.0, vtm=1.0, uta=0.0), vtm_hard_neg=True,
                       mlm_masking_prob=0.5, uta_norm_type="l2", uta_loss_type="l2"),
        gradient_checkpointing=False, fp16=False, deep_fusion=False, distributed=False,
        inputs=dict(max_txt_l=MAX_TXT_L),
        evaluation=dict(eval_frame_ensemble="concat", eval_x_only=False, k_test=K_TEST, eval_offload=False)))


def _random_from_pretrained():
    """BERT gets random weights: from_pretrained builds the class from the config, loading nothing."""
    from models.backbones.bert import builder

    def fake(cls, _name, config=None, output_loading_info=False, local_files_only=True, **kwargs):
        return cls(config, **kwargs), {}

    builder.BertForMaskedLM.from_pretrained = classmethod(fake)
    builder.BertModel.from_pretrained = classmethod(fake)


class _Videos(torch.utils.data.Dataset):
    def __init__(self, videos):
        self.videos = videos  # (B, 3, T, H, W)
        self.media_type = "video"
        self.text = [pre_text(c) for c in CAPTIONS]
        self.image = list(range(len(videos)))
        self.txt2img = {t: v for t, v in enumerate(TEXT_TO_VIDEO)}
        self.img2txt = {v: [t for t, w in enumerate(TEXT_TO_VIDEO) if w == v] for v in range(len(videos))}

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, i):
        return self.videos[i].permute(1, 0, 2, 3), i  # the release's loaders yield (T, C, H, W)


def pre_text(text):
    from dataset.utils import pre_text as release_pre_text

    return release_pre_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", type=Path, help="a checkout of OpenGVLab/VideoMamba")
    ap.add_argument("--release-git-dir", type=Path, help="a bare git mirror of it (HEAD is read)")
    ap.add_argument("--vocab", type=Path, default=None, help="bert-base-uncased vocab.txt (default: the package's)")
    ap.add_argument("--out", type=Path, default=FIXTURE)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        release, commit = args.release, None
        if args.release_git_dir:
            release = Path(tmp) / "release"
            release.mkdir()
            archive = subprocess.run(["git", f"--git-dir={args.release_git_dir}", "archive", "HEAD", "mamba",
                                      "videomamba/video_mm"], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(release)], input=archive, check=True)
            commit = subprocess.run(["git", f"--git-dir={args.release_git_dir}", "rev-parse", "HEAD"], check=True,
                                    capture_output=True, text=True).stdout.strip()
        elif release is None:
            ap.error("give --release or --release-git-dir")
        else:
            commit = subprocess.run(["git", "-C", str(release), "rev-parse", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() or None
        _install_shims(release)
        from retrieval.tokenizer import bert_uncased_vocab

        vocab = bert_uncased_vocab(args.vocab)
        bert_json = Path(tmp) / "config_bert.json"
        base = json.loads((release / "videomamba/video_mm/configs/config_bert.json").read_text())
        bert_json.write_text(json.dumps({**base, **BERT}))
        _random_from_pretrained()
        from models.backbones.bert.tokenization_bert import BertTokenizer
        from models.umt_videomamba import UMT_VIDEOMAMBA
        from tasks.retrieval_utils import evaluation

        tokenizer = BertTokenizer(str(vocab))
        config = _release_config(bert_json)
        torch.manual_seed(0)
        pretrain = UMT_VIDEOMAMBA(config, tokenizer, is_pretrain=True).eval()  # the layout checkpoints are saved in
        keys = [{"key": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                for k, v in pretrain.state_dict().items()]
        weights = release_weights(keys)
        pretrain.load_state_dict(weights, strict=True)
        # Zero-shot evaluation builds a plain BertModel and drops "bert." from every key (the release's setup_model).
        model = UMT_VIDEOMAMBA(config, tokenizer, is_pretrain=False).eval()
        renamed = {k.replace("bert.", ""): v for k, v in weights.items()}
        msg = model.load_state_dict(renamed, strict=False)
        assert not msg.missing_keys, msg.missing_keys
        assert all(k.startswith("text_encoder.cls.") for k in msg.unexpected_keys), msg.unexpected_keys

        spec = {"release_commit": commit, "vision": VISION, "bert": BERT, "embed_dim": EMBED_DIM, "k_test": K_TEST,
                "max_txt_l": MAX_TXT_L, "captions": CAPTIONS, "text_to_video": TEXT_TO_VIDEO,
                "video": {"seed": 1, "count": NUM_VIDEOS, "frames": VISION["num_frames"], "size": VISION["img_size"]},
                "keys": keys}
        videos = release_inputs(spec)
        data = _Videos(videos)
        loader = torch.utils.data.DataLoader(data, batch_size=4)
        i2t_x, t2i_x, i2t_emb, t2i_emb = evaluation(model, loader, tokenizer, torch.device("cpu"), config)

        # The pieces, through the release's own modules.
        text_in = tokenizer(data.text, padding="max_length", truncation=True, max_length=MAX_TXT_L, return_tensors="pt")
        text_states, _ = model.encode_text(text_in)
        text_emb = F.normalize(model.text_proj(text_states[:, 0]), dim=-1)
        tokens, pooled = model.encode_vision(videos.permute(0, 2, 1, 3, 4), test=True)  # (B, T*N, D), (B, T, D)
        frame_emb = F.normalize(model.vision_proj(pooled), dim=-1)  # (B, T, E)
        itm = torch.empty(len(CAPTIONS), NUM_VIDEOS)
        encoder = model.get_text_encoder()
        for v in range(NUM_VIDEOS):
            out = encoder(encoder_embeds=text_states, attention_mask=text_in.attention_mask,
                          encoder_hidden_states=tokens[v:v + 1].expand(len(CAPTIONS), -1, -1),
                          encoder_attention_mask=torch.ones(len(CAPTIONS), tokens.shape[1], dtype=torch.long),
                          return_dict=True, mode="fusion")
            itm[:, v] = model.itm_head(out.last_hidden_state[:, 0])[:, 1]
        sim = t2i_emb  # (texts, videos)
        order = np.sort(sim, axis=1)[:, ::-1]
        margin = float((order[:, K_TEST - 1] - order[:, K_TEST]).min())
        order_v = np.sort(sim.T, axis=1)[:, ::-1]
        margin = min(margin, float((order_v[:, K_TEST - 1] - order_v[:, K_TEST]).min()))
        assert margin > 1e-5, f"top-k boundary too close to call ({margin:.2e}); change the seed"
        spec["topk_margin"] = margin
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.out / "expected.npz", input_ids=text_in.input_ids.numpy(),
                            attention_mask=text_in.attention_mask.numpy(), cleaned=np.array(data.text),
                            text_emb=text_emb.numpy(), video_emb=frame_emb.mean(1).numpy(), itm=itm.numpy(),
                            sim_t2v=t2i_emb, sim_v2t=i2t_emb, rerank_t2v=t2i_x, rerank_v2t=i2t_x)
        (args.out / "spec.json").write_text(json.dumps(spec, indent=1) + "\n")
        print(f"wrote {args.out} ({len(keys)} keys; release commit {commit}; top-k margin {margin:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
