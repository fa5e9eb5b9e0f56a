"""The synthetic world's attribute space: colours, shapes, events, held-out rule and per-split planning."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from retrieval.errors import UsageError

# Object colours, spread out in RGB so they stay tellable apart after H.264 and resizing.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 80, 235),
    "yellow": (245, 215, 30),
    "purple": (145, 50, 195),
    "orange": (250, 135, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
SIZES = ("small", "large")
MOVES = ("left", "right", "up", "down")
# Events one object does on its own; two of them in a row make a "first A, then B" video.
SINGLE = MOVES + ("grow", "shrink", "spin", "bounce", "appear", "disappear", "recolour")
PAIRWISE = ("swap", "follow")  # events of two objects
MOTIONS = SINGLE + PAIRWISE
BACKGROUNDS = ("plain", "gradient", "noise")
ROTATION_SYMMETRIC = ("circle", "ring")  # spinning them draws the same frames, so they never spin
# Events that may come in either order in "first A, then B" (appear must open, disappear must close).
ORDERABLE = MOVES + ("grow", "shrink", "spin", "bounce", "recolour")
# What each event looks like played backwards; spin/bounce/swap read the same both ways.
REVERSED = {"left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow",
            "appear": "disappear", "disappear": "appear", "spin": "spin", "bounce": "bounce",
            "recolour": "recolour", "swap": "swap", "follow": "follow"}
SPLITS = {"train": 0, "test": 1, "temporal": 2}  # stable ids mixed into every seed
SINGLE_EVENT_SHARE = 0.6  # of one-object videos with one event; the rest are "first A, then B"
HELD_OUT_MODULUS = 5  # 1 in 5 colour-shape-motion triples is held out of train


def is_held_out(colour: str, shape: str, motion: str) -> bool:
    """Compositional zero-shot rule: a triple is held out when (c + 2s + 3m) % 5 == 0 (indices into
    COLOUR_NAMES, SHAPES, MOTIONS). Being a Latin-square-like rule, every colour, shape and motion, and
    every pair of them, still shows up in train; only the triple is new at test time."""
    c, s, m = COLOUR_NAMES.index(colour), SHAPES.index(shape), MOTIONS.index(motion)
    return (c + 2 * s + 3 * m) % HELD_OUT_MODULUS == 0


def valid_motions(shape: str) -> tuple[str, ...]:
    return tuple(m for m in MOTIONS if not (m == "spin" and shape in ROTATION_SYMMETRIC))


def can_follow(first: str, second: str, shape: str) -> bool:
    """Whether one object can do `second` right after `first`."""
    if first == second or first in PAIRWISE or second in PAIRWISE:
        return False
    if first == "disappear" or second == "appear":  # nothing left to see / already visible
        return False
    return not (second == "spin" and shape in ROTATION_SYMMETRIC)


def attribute_key(a: dict) -> tuple:
    """Everything a caption states about a video; unique within the test split."""
    first = (a["colour"], a["shape"])
    second = (a["other"]["colour"], a["other"]["shape"]) if a["other"] else (None, None)
    if a["events"] == ["swap"]:  # "A and B swap places" looks just like "B and A swap places"
        first, second = sorted([first, second])
    return (*first, a["size"], tuple(a["events"]), a["to_colour"], *second, a["background"])


def triples(a: dict) -> list[tuple[str, str, str]]:
    """Every (colour, shape, motion) a video shows, including after a colour change and the second object."""
    colour, out = a["colour"], []
    for e in a["events"]:
        out.append((colour, a["shape"], e))
        if e == "recolour":
            colour = a["to_colour"]
    if a["other"]:
        out.append((a["other"]["colour"], a["other"]["shape"], a["events"][0]))
    return out


def _attrs(colour, shape, size, events, background, to_colour=None, other=None, shake=False) -> dict:
    return {"colour": colour, "shape": shape, "size": size, "events": list(events), "to_colour": to_colour,
            "other": other, "background": background, "shake": bool(shake)}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def sample_attributes(rng: np.random.Generator, second_event_p: float = 1 - SINGLE_EVENT_SHARE,
                      motions: tuple[str, ...] = MOTIONS) -> dict:
    """One random video description, ignoring the held-out rule."""
    colour, shape, size = _pick(rng, COLOUR_NAMES), _pick(rng, SHAPES), _pick(rng, SIZES)
    first = _pick(rng, [m for m in valid_motions(shape) if m in motions])
    events = [first]
    if first in SINGLE and rng.random() < second_event_p:
        options = [e for e in SINGLE if can_follow(first, e, shape)]
        if options:
            events.append(_pick(rng, options))
    to_colour = _pick(rng, [c for c in COLOUR_NAMES if c != colour]) if "recolour" in events else None
    other = None
    if first in PAIRWISE:  # a different colour keeps the two objects apart in the caption and on screen
        other = {"colour": _pick(rng, [c for c in COLOUR_NAMES if c != colour]), "shape": _pick(rng, SHAPES)}
    background = _pick(rng, BACKGROUNDS)
    shake = rng.random() < 0.25
    return _attrs(colour, shape, size, events, background, to_colour, other, shake)


def sample_train(rng: np.random.Generator) -> dict:
    while True:  # rejection: about 1 in 3 draws touches a held-out triple
        a = sample_attributes(rng)
        if not any(is_held_out(*t) for t in triples(a)):
            return a


def held_out_pools() -> dict[tuple[str, str, str], list[dict]]:
    """All distinct test descriptions, grouped by their held-out (colour, shape, first motion) triple."""
    pools, seen = {}, set()
    for colour, shape, motion in itertools.product(COLOUR_NAMES, SHAPES, MOTIONS):
        if motion not in valid_motions(shape) or not is_held_out(colour, shape, motion):
            continue
        others = [c for c in COLOUR_NAMES if c != colour]
        variants = []  # (events, to_colour, other)
        if motion in PAIRWISE:
            variants = [([motion], None, {"colour": c, "shape": s}) for c in others for s in SHAPES]
        else:
            for second in [None] + [e for e in SINGLE if can_follow(motion, e, shape)]:
                events = [motion] + ([second] if second else [])
                tos = others if "recolour" in events else [None]
                variants += [(events, to, None) for to in tos]
        pool = []
        for size, bg, (events, to, other) in itertools.product(SIZES, BACKGROUNDS, variants):
            a = _attrs(colour, shape, size, events, bg, to, other)
            if attribute_key(a) not in seen:  # a swap can be held out under both of its objects
                seen.add(attribute_key(a))
                pool.append(a)
        pools[(colour, shape, motion)] = pool
    return pools


def trainable_reversal(a: dict) -> dict | None:
    """The attributes of a train video played backwards, when that reads differently from the video and
    shows no held-out combination (reversing "moves right" into a held-out "moves left" would leak the test)."""
    b = reverse_attributes(a)
    if attribute_key(b) == attribute_key(a) or any(is_held_out(*t) for t in triples(b)):
        return None
    return b


def max_test_videos() -> int:
    return sum(len(p) for p in held_out_pools().values())


def reverse_attributes(a: dict) -> dict:
    """The description of the same frames played backwards."""
    b = dict(a, events=[REVERSED[e] for e in reversed(a["events"])])
    if a["to_colour"]:
        b["colour"], b["to_colour"] = a["to_colour"], a["colour"]
    if "follow" in a["events"]:  # backwards, the leader trails the follower
        b["colour"], b["shape"] = a["other"]["colour"], a["other"]["shape"]
        b["other"] = {"colour": a["colour"], "shape": a["shape"]}
    return b


@dataclass(frozen=True)
class VideoSpec:
    """Everything render_video needs; attributes are what captions describe."""
    id: str
    attributes: dict
    seed: tuple[int, ...]       # positions, background, shake; shared by temporal twins
    size: int = 224             # frame side in pixels (even, for yuv420p)
    frames: int = 32
    scene: dict | None = None   # attributes actually drawn when they differ (the time-reversed twin)
    reverse: bool = False       # play the drawn scene backwards


@dataclass(frozen=True)
class PlannedVideo:
    spec: VideoSpec
    caption_seed: tuple[int, ...]  # twins share it so their captions use the same phrasing
    pair: str | None = None
    pair_kind: str | None = None   # "reverse" (same frames backwards) or "order" (first A then B vs B then A)
    twin: int | None = None        # index of the twin in the plan


def _seed(seed: int, split: str, index: int, stream: int) -> tuple[int, ...]:
    # Derived from (seed, split, index) only, so the number of workers never changes a video.
    return (int(seed), SPLITS[split], int(index), stream)


def _stratified(pool: list[dict], rng: np.random.Generator) -> list[dict]:
    """Order one triple's pool so early picks look like train: mostly single-event videos, and second
    events drawn by kind (a plain shuffle would be mostly colour changes, which have 7 variants each)."""
    groups: dict[tuple, list[dict]] = {}
    for a in pool:
        groups.setdefault(tuple(a["events"]), []).append(a)
    groups = {k: [g[i] for i in rng.permutation(len(g))] for k, g in groups.items()}
    single = [k for k in groups if len(k) == 1]
    out = []
    while any(groups.values()):
        live = [k for k in groups if groups[k]]
        live_single = [k for k in live if k in single]
        live_double = [k for k in live if k not in single]
        choose_single = live_single and (not live_double or rng.random() < SINGLE_EVENT_SHARE)
        options = live_single if choose_single else live_double
        out.append(groups[options[int(rng.integers(len(options)))]].pop())
    return out


def _plan_test(n: int, seed: int) -> list[dict]:
    """Round-robin over shuffled held-out triples so motions stay balanced and a longer plan extends a shorter."""
    pools = held_out_pools()
    total = sum(len(p) for p in pools.values())
    if n > total:
        raise UsageError(f"the test split holds at most {total} videos with unique attribute tuples; asked for {n}")
    rng = np.random.default_rng([int(seed), SPLITS["test"], 2**31 - 1])
    keys = sorted(pools)
    order = [keys[i] for i in rng.permutation(len(keys))]
    shuffled = {k: _stratified(pools[k], rng) for k in order}
    out, r = [], 0
    while len(out) < n:
        out += [shuffled[k][r] for k in order if r < len(shuffled[k])][: n - len(out)]
        r += 1
    for i, a in enumerate(out):  # shake is a nuisance, not part of the tuple
        a["shake"] = bool(np.random.default_rng(_seed(seed, "test", i, 0)).random() < 0.25)
    return out


def _sample_temporal(rng: np.random.Generator, kind: str) -> tuple[dict, dict]:
    if kind == "order":
        a = sample_attributes(rng, 0.0, ORDERABLE)
        shape = a["shape"]
        second = _pick(rng, [e for e in ORDERABLE if e != a["events"][0] and can_follow(a["events"][0], e, shape)])
        a["events"].append(second)
        if "recolour" in a["events"] and not a["to_colour"]:
            a["to_colour"] = _pick(rng, [c for c in COLOUR_NAMES if c != a["colour"]])
        return a, dict(a, events=a["events"][::-1])
    while True:  # reversal must read differently: no lone spin/bounce/swap, no "left then right"
        a = sample_attributes(rng, 0.5, tuple(m for m in MOTIONS if m != "swap"))
        b = reverse_attributes(a)
        if attribute_key(a) != attribute_key(b):
            return a, b


def plan(split: str, n: int, seed: int = 0, size: int = 224, frames: int = 32) -> list[PlannedVideo]:
    """The videos of one split, in order; cheap (no rendering)."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if n < 0:
        raise UsageError("the number of videos must be >= 0")
    if split == "train":
        return [PlannedVideo(VideoSpec(f"train_{i:06d}", sample_train(np.random.default_rng(_seed(seed, split, i, 0))),
                                       _seed(seed, split, i, 1), size, frames), _seed(seed, split, i, 2))
                for i in range(n)]
    if split == "test":
        return [PlannedVideo(VideoSpec(f"test_{i:06d}", a, _seed(seed, split, i, 1), size, frames),
                             _seed(seed, split, i, 2)) for i, a in enumerate(_plan_test(n, seed))]
    if n % 2:
        raise UsageError(f"the temporal split is made of pairs; ask for an even number of videos, not {n}")
    out = []
    for p in range(n // 2):
        kind = "reverse" if p % 2 == 0 else "order"
        a, b = _sample_temporal(np.random.default_rng(_seed(seed, split, p, 0)), kind)
        pair, render_seed, caption_seed = f"temporal_{p:05d}", _seed(seed, split, p, 1), _seed(seed, split, p, 2)
        spec_b = (VideoSpec(f"{pair}_b", b, render_seed, size, frames, scene=a, reverse=True) if kind == "reverse"
                  else VideoSpec(f"{pair}_b", b, render_seed, size, frames))
        out += [PlannedVideo(VideoSpec(f"{pair}_a", a, render_seed, size, frames), caption_seed, pair, kind, 2 * p + 1),
                PlannedVideo(spec_b, caption_seed, pair, kind, 2 * p)]
    return out
