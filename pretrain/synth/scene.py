"""Turn a video description into per-frame object tracks and a background (no pixels yet)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import COLOURS, MOVES, SIZES

RADIUS = {"small": 0.07, "large": 0.12}  # fraction of the frame side at the object's middle size
assert set(RADIUS) == set(SIZES)
GROW = np.log(1.8)  # one grow/shrink changes the radius by 1.8x, so "small" and "large" stay apart mid-clip
# Muted background colours; each video uses only those far from all of its object colours.
BACKGROUND_COLOURS = (
    (128, 128, 128), (70, 90, 120), (190, 175, 140), (45, 110, 110), (115, 80, 55),
    (105, 115, 60), (155, 110, 135), (95, 60, 90), (200, 190, 215),
)
MIN_CONTRAST = 110.0  # RGB distance between an object colour and any background colour it is drawn on
NOISE_AMPLITUDE = 22.0  # keeps noisy backgrounds within reach of MIN_CONTRAST


@dataclass
class Track:
    """One object over time; positions and radius in frame-side units, y pointing down."""
    shape: str
    x: np.ndarray      # (T,)
    y: np.ndarray      # (T,)
    radius: np.ndarray  # (T,)
    angle: np.ndarray  # (T,) radians
    alpha: np.ndarray  # (T,) opacity in [0, 1]
    rgb: np.ndarray    # (T, 3) float


@dataclass
class Scene:
    tracks: list[Track]               # drawn in order, last on top
    background: str                   # plain | gradient | noise
    bg_colours: list[tuple[int, int, int]]
    bg_angle: float                   # gradient direction
    noise_seed: int
    shake: np.ndarray                 # (T, 2) offset (dx, dy) in frame-side units


def _ramp(u: np.ndarray, start: float, width: float) -> np.ndarray:
    return np.clip((u - start) / width, 0.0, 1.0)


def background_choices(colours: list[str]) -> list[tuple[int, int, int]]:
    objs = np.array([COLOURS[c] for c in colours], float)
    return [bg for bg in BACKGROUND_COLOURS if np.linalg.norm(objs - np.array(bg, float), axis=1).min() >= MIN_CONTRAST]


def _fit(offsets: np.ndarray, margin: float, u: float) -> np.ndarray:
    """Absolute coordinates for a path of offsets: shrink it if too long, then place it inside [margin, 1-margin]."""
    room = 1.0 - 2 * margin
    span = offsets.max() - offsets.min()
    if span > room:
        offsets = offsets * (room / span)
    lo, hi = margin - offsets.min(), 1.0 - margin - offsets.max()
    return offsets + lo + u * (hi - lo)


def _single(a: dict, t: np.ndarray, rng: np.random.Generator, shake_room: float) -> list[Track]:
    # Draw every random parameter up front, in a fixed order: "first A, then B" and "first B, then A"
    # rendered with the same seed then share distances, background and start position.
    dist, turns, hop = rng.uniform(0.28, 0.38), rng.uniform(0.6, 0.9) * rng.choice([-1, 1]), rng.uniform(0.15, 0.22)
    ux, uy, angle0 = rng.random(), rng.random(), rng.uniform(-0.15, 0.15)
    k, T = len(a["events"]), len(t)
    dx, dy, log_r, angle = np.zeros(T), np.zeros(T), np.zeros(T), np.full(T, angle0)
    alpha, rgb = np.ones(T), np.tile(np.array(COLOURS[a["colour"]], float), (T, 1))
    for j, e in enumerate(a["events"]):
        u = np.clip(t * k - j, 0.0, 1.0)  # event j plays during the j-th slice of the clip
        if e in MOVES:
            axis = dx if e in ("left", "right") else dy
            axis += dist * u * (-1 if e in ("left", "up") else 1)
        elif e == "grow":
            log_r += GROW * u
        elif e == "shrink":
            log_r -= GROW * u
        elif e == "spin":
            angle += 2 * np.pi * turns * u
        elif e == "bounce":
            dy -= hop * np.abs(np.sin(2 * np.pi * u))  # two hops, landing where it took off
        elif e == "appear":
            alpha *= _ramp(u, 0.15, 0.7)
        elif e == "disappear":
            alpha *= 1 - _ramp(u, 0.15, 0.7)
        elif e == "recolour":
            w = _ramp(u, 0.35, 0.3)[:, None]
            rgb = rgb * (1 - w) + np.array(COLOURS[a["to_colour"]], float) * w
    log_r -= (log_r.max() + log_r.min()) / 2  # the size word names the middle size, the same played backwards
    radius = RADIUS[a["size"]] * np.exp(log_r)
    margin = radius.max() * 1.25 + 0.02 + shake_room  # star tips and triangle corners reach past the radius
    return [Track(a["shape"], _fit(dx, margin, ux), _fit(dy, margin, uy), radius, angle, alpha, rgb)]


def _pairwise(a: dict, t: np.ndarray, rng: np.random.Generator, shake_room: float) -> list[Track]:
    T, r = len(t), RADIUS[a["size"]]
    margin = r * 1.25 + 0.02 + shake_room
    ones = np.ones(T)
    s_first, s_second = a["shape"], a["other"]["shape"]
    rgb_first = np.tile(np.array(COLOURS[a["colour"]], float), (T, 1))
    rgb_second = np.tile(np.array(COLOURS[a["other"]["colour"]], float), (T, 1))
    if a["events"][0] == "swap":
        gap, arc, cy = rng.uniform(0.35, 0.5), rng.uniform(0.1, 0.14), rng.uniform(0.35, 0.65)
        gap = min(gap, 1 - 2 * margin)
        cx = rng.uniform(margin + gap / 2, 1 - margin - gap / 2)
        cy = np.clip(cy, margin + arc, 1 - margin - arc)
        s = t * t * (3 - 2 * t)  # ease in and out
        lateral = arc * np.sin(np.pi * s)  # one passes above, the other below, so they never fully overlap
        x1, x2 = cx - gap / 2 + gap * s, cx + gap / 2 - gap * s
        return [Track(s_second, x2, cy + lateral, r * ones, np.zeros(T), ones, rgb_second),
                Track(s_first, x1, cy - lateral, r * ones, np.zeros(T), ones.copy(), rgb_first)]
    # follow: the leader walks a gently curved path; the follower walks the same path `lag` later.
    theta, gap, bend = rng.uniform(0, 2 * np.pi), rng.uniform(2.6, 3.0), rng.uniform(-0.08, 0.08)
    direction = np.array([np.cos(theta), np.sin(theta)])
    normal = np.array([-direction[1], direction[0]])
    reach = 0.5 - margin - abs(bend)
    half = min(0.45, reach / max(abs(direction[0]), 1e-6), reach / max(abs(direction[1]), 1e-6))
    # Lag in path time so the two keep `gap` radii apart; capped so each still travels over half its path.
    share = min(gap * r / (2 * half), 0.45)
    lag = share / (1 - share)

    def path(tau):
        p = (tau + lag) / (1 + lag)
        return 0.5 + np.outer((2 * p - 1) * half, direction) + np.outer(bend * np.sin(np.pi * p), normal)

    leader, follower = path(t), path(t - lag)
    return [Track(s_second, leader[:, 0], leader[:, 1], r * ones, np.zeros(T), ones, rgb_second),
            Track(s_first, follower[:, 0], follower[:, 1], r * ones, np.zeros(T), ones.copy(), rgb_first)]


def build_scene(a: dict, rng: np.random.Generator, frames: int) -> Scene:
    """a: attributes (world.py); rng: the video's render stream."""
    colours = [c for c in (a["colour"], a["to_colour"], a["other"] and a["other"]["colour"]) if c]
    choices = background_choices(colours)
    first = int(rng.integers(len(choices)))
    second = int(rng.integers(len(choices) - 1)) if len(choices) > 1 else 0
    rest = [c for c in choices if c != choices[first]]
    bg_colours = [choices[first], rest[second] if len(choices) > 1 else choices[0]]
    bg_angle, noise_seed = float(rng.uniform(0, 2 * np.pi)), int(rng.integers(2**31))
    shake_room = 0.015 if a["shake"] else 0.0
    shake = np.clip(rng.normal(0, 0.006, (frames, 2)), -shake_room, shake_room)
    t = np.linspace(0.0, 1.0, frames)
    tracks = (_pairwise if a["other"] else _single)(a, t, rng, shake_room)
    return Scene(tracks, a["background"], bg_colours, bg_angle, noise_seed, shake)
