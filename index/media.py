"""Small media helpers for showing hits: a JPEG thumbnail of a segment (PyAV only, no imaging library)."""
from __future__ import annotations

from fractions import Fraction


def thumbnail_jpeg(path: str, start: float, end: float, width: int = 320, quality: int = 5) -> bytes:
    """JPEG bytes of the middle frame of [start, end) scaled to `width` px (quality: 2 best .. 31 worst)."""
    import av

    from retrieval.data.video import encoder_frame, read_frames

    frame = read_frames(path, 1, mode="middle", start_sec=start, end_sec=end if end > start else None)[0]
    h, w = frame.shape[:2]
    width = min(width, w) // 2 * 2  # yuv420 wants even sizes
    height = max(2, int(round(h * width / w)) // 2 * 2)
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    ctx.options = {"qscale": str(quality)}
    ctx.flags |= getattr(av.codec.context.Flags, "qscale", 0)
    packets = list(ctx.encode(encoder_frame(frame, width, height, "yuvj420p"))) + list(ctx.encode(None))
    return b"".join(bytes(p) for p in packets)
