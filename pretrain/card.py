"""The model card a pretraining run writes into RUN/model: data, steps, input, final check (+ synthetic vocabulary)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.model import CardResult, ModelCard

from .config import TrainConfig

SYNTH_SUMMARY = ("rendered coloured shapes (circles, squares, triangles, stars, rings, crosses) that move, grow, "
                 "shrink, spin, bounce, appear, disappear, change colour, swap places or follow each other on "
                 "plain, gradient or noisy backgrounds")
FREE_FORM_EXAMPLES = ("a red circle moves to the left", "a small star spins on a noisy background",
                      "a big blue square grows")
TEMPLATE_EXAMPLES = 5  # template-worded captions of held-out test clips


def synth_vocabulary() -> dict[str, list[str]]:
    """The words the synthetic world's template captions use, by kind (pretrain.synth.captions.TEMPLATE)."""
    from .synth.captions import TEMPLATE
    from .synth.world import PAIRWISE

    def flat(table: dict) -> list[str]:
        return [w for options in table.values() for w in options]

    motions = [options[0] for event, options in TEMPLATE["event"].items() if event != "recolour"]
    motions.append("changes colour (turns blue)")
    motions += [{"swap": "A and B swap places", "follow": "A follows B"}[p] for p in PAIRWISE]
    return {"colours": flat(TEMPLATE["colour"]), "shapes": flat(TEMPLATE["shape"]), "sizes": flat(TEMPLATE["size"]),
            "motions": motions + ["first A, then B (two events in order)"],
            "backgrounds": [options[0].replace("on a ", "").replace(" background", "")
                            for options in TEMPLATE["background"].values()]}


def synth_examples(seed: int = 0) -> list[str]:
    """Template-worded captions of a few held-out test clips, then free-form queries in the same vocabulary."""
    from .synth.captions import caption
    from .synth.world import plan

    rng = np.random.default_rng(seed)
    template = [caption(item.spec.attributes, rng) for item in plan("test", TEMPLATE_EXAMPLES, seed)]
    return template + list(FREE_FORM_EXAMPLES)


def training_card(cfg: TrainConfig, steps: int, metrics: dict | None = None, world: int = 1,
                  command: str | None = None) -> ModelCard:
    """What RUN/model says about itself once training ends (`metrics`: the final zero-shot check; `command`: what
    made them, by default the run's resolved config, which run.py writes to RUN/config.yaml)."""
    command = command or f"python pretrain/run.py --config {Path(cfg.run.out) / 'config.yaml'}"
    synthetic = cfg.synth.train_videos > 0
    global_batch = cfg.data.batch_size * cfg.engine.grad_accum * world
    if synthetic:
        s = cfg.synth
        data = (f"the `vmr synth` world's train split ({s.size} px, {s.frames} frames a clip; the test split's "
                f"colour-shape-motion triples held out), 2-3 template captions a clip")
        if cfg.data.reverse_pairs > 0:
            data += f", time-reversed clips as hard negatives (reverse_pairs {cfg.data.reverse_pairs:g})"
    else:
        data = ", ".join(src.name or src.urls for src in cfg.data.sources) or "not recorded"
    card = ModelCard(domain="synthetic" if synthetic else "unknown", summary=SYNTH_SUMMARY if synthetic else "",
                     data=data + f"; global batch {global_batch}", clips=cfg.synth.train_videos if synthetic else 0,
                     steps=int(steps))
    if metrics and "t2v_r1" in metrics:
        card.results.append(CardResult(
            f"zero-shot check at the end of training ({int(metrics.get('videos', 0))} clips of {cfg.val.anno}), "
            "text-to-video R@1 / R@5", f"{metrics['t2v_r1']:.1f}% / {metrics['t2v_r5']:.1f}%", command))
    if synthetic:
        card.vocabulary = synth_vocabulary()
        card.examples = synth_examples(cfg.synth.seed)
    return card
