"""Zero-shot evaluation of a model on annotated videos (beside index/: may import retrieval/, never pretrain/ or app/).

    evaluate.py  retrieval benchmarks (MSRVTT, ActivityNet, LSMDC, generic): locate -> embed (cached) -> score
    report.py    the Markdown report, the JSON file, the results table with the release's published rows
    temporal.py  two-way temporal score of time-twin pairs (vmr synth --split temporal)
"""
