"""Rasterise a scene with numpy: shapes as approximate signed distances, one anti-aliased pixel of edge."""
from __future__ import annotations

import numpy as np

from .scene import NOISE_AMPLITUDE, Scene, build_scene
from .world import VideoSpec

_STAR_TIP, _STAR_INNER, _STAR_SECTOR = 1.2, 0.5, 2 * np.pi / 5
_sa = np.array([_STAR_INNER * np.cos(_STAR_SECTOR / 2) - _STAR_TIP, _STAR_INNER * np.sin(_STAR_SECTOR / 2)])
_STAR_NORMAL = np.array([_sa[1], -_sa[0]]) / np.hypot(*_sa)  # outward normal of the tip-to-notch edge
_TRI_NORMALS = np.array([[np.cos(a), np.sin(a)] for a in np.deg2rad([90, 210, 330])])  # y down: apex points up


def _sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance in units of the radius (negative inside); u right, v down."""
    if shape == "circle":
        return np.hypot(u, v) - 1.0
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.72) - 0.28
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.85
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(au - 1.0, av - 0.33), np.maximum(au - 0.33, av - 1.0))
    if shape == "triangle":
        return np.maximum(np.maximum(u * _TRI_NORMALS[0, 0] + v * _TRI_NORMALS[0, 1],
                                     u * _TRI_NORMALS[1, 0] + v * _TRI_NORMALS[1, 1]),
                          u * _TRI_NORMALS[2, 0] + v * _TRI_NORMALS[2, 1]) - 0.6
    if shape == "star":
        rho = np.hypot(u, v)
        phi = np.mod(np.arctan2(v, u) + np.pi / 2, _STAR_SECTOR)  # one tip points up
        phi = np.minimum(phi, _STAR_SECTOR - phi)  # fold onto the half sector [0, 36 deg]
        return (rho * np.cos(phi) - _STAR_TIP) * _STAR_NORMAL[0] + rho * np.sin(phi) * _STAR_NORMAL[1]
    raise ValueError(f"unknown shape {shape!r}")


def _background(scene: Scene, side: int) -> np.ndarray:
    """(side, side, 3) float32 background, static over time so reversing a clip only reverses motion."""
    c0, c1 = (np.array(c, np.float32) for c in scene.bg_colours)
    if scene.background == "plain":
        return np.broadcast_to(c0, (side, side, 3)).copy()
    grid = (np.arange(side, dtype=np.float32) + 0.5) / side - 0.5
    if scene.background == "gradient":
        g = grid[None, :] * np.cos(scene.bg_angle) + grid[:, None] * np.sin(scene.bg_angle)
        g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
        return c0 + (c1 - c0) * g[..., None]
    rng = np.random.default_rng(scene.noise_seed)
    # Mostly-grey blobs (a little colour) upsampled bilinearly: texture without new hues that could rival objects.
    coarse = (rng.normal(0, 1, (7, 7, 1)) + 0.3 * rng.normal(0, 1, (7, 7, 3))).astype(np.float32)
    pos = (grid + 0.5) * 6
    i0 = np.minimum(pos.astype(int), 5)
    w = (pos - i0)[:, None]
    rows = coarse[i0] * (1 - w[..., None]) + coarse[i0 + 1] * w[..., None]          # (side, 7, 3)
    blob = rows[:, i0] * (1 - w[None, :, :]) + rows[:, i0 + 1] * w[None, :, :]      # (side, side, 3)
    grain = rng.normal(0, 0.35, (side, side, 1)).astype(np.float32)  # fine grain, same in all channels
    texture = np.clip(0.7 * blob + grain, -1.0, 1.0) * NOISE_AMPLITUDE
    return c0 + texture


def _draw(frame: np.ndarray, shape: str, cx: float, cy: float, r: float, angle: float, alpha: float,
          rgb: np.ndarray) -> None:
    """Composite one object into frame (H, W, 3) in place, touching only its bounding box."""
    side = frame.shape[0]
    if alpha <= 0.0:
        return
    reach = r * 1.3 * side + 2
    x0, x1 = max(int(cx * side - reach), 0), min(int(cx * side + reach) + 1, side)
    y0, y1 = max(int(cy * side - reach), 0), min(int(cy * side + reach) + 1, side)
    if x0 >= x1 or y0 >= y1:
        return
    xs = ((np.arange(x0, x1, dtype=np.float32) + 0.5) / side - cx)[None, :]
    ys = ((np.arange(y0, y1, dtype=np.float32) + 0.5) / side - cy)[:, None]
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = (xs * ca + ys * sa) / r, (ys * ca - xs * sa) / r
    cover = np.clip(0.5 - _sdf(shape, u, v) * (r * side), 0.0, 1.0) * alpha  # ~1 px soft edge
    patch = frame[y0:y1, x0:x1]
    patch += (rgb.astype(np.float32) - patch) * cover[..., None]


def render_scene(scene: Scene, side: int) -> np.ndarray:
    """-> np.uint8 (T, side, side, 3)."""
    pad = int(np.ceil(np.abs(scene.shake).max() * side)) if scene.shake.size else 0
    background = _background(scene, side + 2 * pad)
    T = len(scene.shake)
    out = np.empty((T, side, side, 3), np.uint8)
    for i in range(T):
        # Camera shake moves the whole view by whole pixels: crop the padded background, shift the objects alike.
        sx, sy = (int(round(float(s) * side)) for s in scene.shake[i])
        frame = background[pad + sy: pad + sy + side, pad + sx: pad + sx + side].copy()
        for tr in scene.tracks:
            _draw(frame, tr.shape, float(tr.x[i]) - sx / side, float(tr.y[i]) - sy / side, float(tr.radius[i]),
                  float(tr.angle[i]), float(tr.alpha[i]), tr.rgb[i])
        np.clip(frame, 0, 255, out=frame)
        out[i] = frame  # float -> uint8 truncation is deterministic
    return out


def render_video(spec: VideoSpec) -> np.ndarray:
    """-> np.uint8 (T, H, W, 3) frames for spec; the same spec always gives the same array."""
    scene = build_scene(spec.scene or spec.attributes, np.random.default_rng(list(spec.seed)), spec.frames)
    frames = render_scene(scene, spec.size)
    return np.ascontiguousarray(frames[::-1]) if spec.reverse else frames
