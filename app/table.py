"""The one results table `vmr search` and `vmr demo` print: rank, score, video, segment; fits 80 columns."""
from __future__ import annotations

import textwrap

WIDTH = 80
SCORE_HELP = ("score: cosine similarity of the query's and the segment's embeddings, from -1 to 1; higher is "
              "closer. Compare scores within one search: their scale depends on the model.")
_FIXED = 4 + 2 + 6 + 2 + 2 + 11  # rank, gaps, score, segment


def clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def span(start: float, end: float) -> str:
    return f"{clock(start)}-{clock(end)}"


def _fit(text: str, width: int) -> str:
    """Cut from the left: the file name at the end says most."""
    return text if len(text) <= width else "..." + text[-(width - 3):]


def more_segments(n: int) -> str:
    return f"+{n} more segment{'s' if n != 1 else ''} of this video"


def hits_table(hits, all_segments: bool = False, marks: dict[int, str] | None = None, mark_title: str = "",
               legend: bool = True, more_hint: str = "", width: int = WIDTH) -> list[str]:
    """Lines of the table. A video's other matching segments are counted under its row ("+2 more segments of this
    video") or, with all_segments, listed one per line. `marks` (rank -> a short tag) adds a last column."""
    if not hits:
        return ["no results"]
    mark_w = max([len(mark_title)] + [len(m) for m in (marks or {}).values()]) if marks is not None else 0
    video_w = width - _FIXED - (mark_w + 2 if mark_w else 0)
    head = f"{'rank':>4}  {'score':>6}  {'video':<{video_w}}  {'segment':<11}"
    lines = [(head + (f"  {mark_title}" if mark_w else "")).rstrip()]
    for h in hits:
        row = f"{h.rank:>4}  {h.score:6.3f}  {_fit(h.path, video_w):<{video_w}}  {span(h.start, h.end):<11}"
        if mark_w:
            row += f"  {(marks or {}).get(h.rank, '')}"
        lines.append(row.rstrip())
        others = h.segments[1:]
        if others and all_segments:
            for seg in others:
                lines.append(f"{'':>4}  {seg.score:6.3f}  {'  same video':<{video_w}}  {span(seg.start, seg.end)}")
        elif others:
            lines.append(f"{'':>4}  {'':>6}  {more_segments(len(others))}{' ' + more_hint if more_hint else ''}")
    if legend:
        lines += textwrap.wrap(SCORE_HELP, width)
    return lines
