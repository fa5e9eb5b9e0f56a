"""Train a SentencePiece caption tokenizer, or show how a tokenizer splits a text.

`vmr tokenizer train --captions FILE... --vocab-size N --out DIR` reads plain-text files (one caption
per line) or JSON annotation files (.json, read as `vmr shards` reads them); `vmr tokenizer encode
--tokenizer DIR "text"` prints ids and pieces.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train a SentencePiece tokenizer on caption files",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--captions", nargs="+", required=True, metavar="FILE",
                       help="caption files: .txt one per line, or .json annotation files (VINDLU lists, "
                            "MSRVTT_data.json, ActivityNet)")
    train.add_argument("--vocab-size", type=int, required=True, help="target vocabulary size (soft limit)")
    train.add_argument("--out", required=True, help="output tokenizer folder")
    train.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    train.add_argument("--context-length", type=int, default=77, help="tokens per caption incl. start/end")

    enc = sub.add_parser("encode", help="print the ids and pieces of a text",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    enc.add_argument("--tokenizer", required=True,
                     help="tokenizer folder, SentencePiece .model, Hugging Face folder, or 'bpe' (open_clip's)")
    enc.add_argument("--context-length", type=int, default=None, help="pad/truncate to this many tokens")
    enc.add_argument("--keep-padding", action="store_true", help="also print the padding tokens")
    enc.add_argument("text", help="text to tokenize")


def run(args: argparse.Namespace) -> int:
    from retrieval.tokenizer import create_tokenizer, load_tokenizer, train_sentencepiece

    if args.tokenizer_command == "train":
        model_file = train_sentencepiece(args.captions, args.vocab_size, args.out,
                                         model_type=args.model_type, context_length=args.context_length)
        tok = load_tokenizer(args.out)
        print(f"trained {tok.kind} tokenizer: {tok.vocab_size} pieces -> {args.out} ({model_file.name})")
        return 0
    tok = create_tokenizer("bpe") if args.tokenizer == "bpe" else load_tokenizer(args.tokenizer)
    ids = tok(args.text, context_length=args.context_length)[0].tolist()
    if not args.keep_padding:
        end = ids.index(tok.eot_id) + 1  # the end token is always there, also after truncation
        ids = ids[:end]
    print("ids:   ", " ".join(map(str, ids)))
    print("pieces:", " ".join(tok.pieces(ids)))
    return 0
