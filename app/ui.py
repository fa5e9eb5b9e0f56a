"""Gradio UI: search box, k and threshold controls, result cards playing the matched segment, index info panel.

Widgets only: every answer comes from an `index.searcher.Searcher`. Media are served by Gradio's file route,
limited (`allowed_paths`) to the index's library roots; Gradio resolves `..` and symlinks before that check.
"""
from __future__ import annotations

import base64
import html
import logging
from urllib.parse import quote

log = logging.getLogger(__name__)

FILE_ROUTE = "/gradio_api/file="

CSS = """
.vmr-results {display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 14px;}
.vmr-card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 8px;
           background: var(--block-background-fill);}
.vmr-card video, .vmr-card img {width: 100%; aspect-ratio: 16 / 9; object-fit: contain; background: #000;
                                border-radius: 6px;}
.vmr-meta {display: flex; gap: 8px; align-items: baseline; flex-wrap: wrap; margin-top: 6px; font-size: 14px;}
.vmr-path {font-weight: 600; word-break: break-all;}
.vmr-score {margin-left: auto; font-variant-numeric: tabular-nums; color: var(--body-text-color-subdued);}
.vmr-more {font-size: 12px; color: var(--body-text-color-subdued); margin-top: 4px;}
.vmr-msg {padding: 12px; color: var(--body-text-color-subdued);}
"""


def clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def media_url(path: str, start: float | None = None, end: float | None = None) -> str:
    """Gradio file URL; a `#t=start,end` media fragment makes the browser start (and pause) at the segment."""
    url = FILE_ROUTE + quote(path)
    return url + (f"#t={start:.2f},{end:.2f}" if start is not None and end and end > start else "")


def card_html(searcher, hit) -> str:
    try:
        path = searcher.media_path(hit)
    except ValueError as e:  # never link what lies outside the library
        return f"<div class='vmr-card vmr-msg'>{html.escape(str(e))}</div>"
    try:
        poster = "data:image/jpeg;base64," + base64.b64encode(searcher.thumbnail(hit)).decode()
    except Exception as e:  # noqa: BLE001 - a thumbnail is decoration; the card must still show
        log.warning("no thumbnail for %s: %s", path, e)
        poster = ""
    src = html.escape(media_url(path, hit.start, hit.end), quote=True)
    if path.lower().endswith(".gif"):
        media = f"<img src='{src.split('#')[0]}' alt='' loading='lazy'>"
    else:
        media = (f"<video controls preload='metadata' playsinline poster='{html.escape(poster, quote=True)}' "
                 f"src='{src}'></video>")
    more = [f"{clock(s.start)}–{clock(s.end)} ({s.score:.3f})" for s in hit.segments[1:6]]
    more_html = f"<div class='vmr-more'>also: {', '.join(more)}</div>" if more else ""
    name = html.escape(hit.path)
    return (f"<div class='vmr-card' data-rank='{hit.rank}' data-path='{html.escape(hit.path, quote=True)}'>{media}"
            f"<div class='vmr-meta'><span class='vmr-rank'>#{hit.rank}</span>"
            f"<span class='vmr-path' title='{html.escape(path, quote=True)}'>{name}</span>"
            f"<span class='vmr-time'>{clock(hit.start)}–{clock(hit.end)}</span>"
            f"<span class='vmr-score'>{hit.score:.3f}</span></div>{more_html}</div>")


def results_html(searcher, hits) -> str:
    if not hits:
        return "<div class='vmr-msg'>No matching videos.</div>"
    return "<div class='vmr-results'>" + "".join(card_html(searcher, h) for h in hits) + "</div>"


def hit_json(hit) -> dict:
    """A hit for the JSON output; "video" not "path", since gradio_client downloads any dict with a "path"."""
    d = hit.to_dict()
    d["video"] = d.pop("path")
    return d


def create_ui(searcher, max_k: int = 50):
    """The Blocks app. API: /search (query, k, min_score, group) -> (html, hits json); /info -> dict."""
    import gradio as gr

    from index.searcher import MAX_QUERY_CHARS

    from index.rerank import rerank_hits, supports_rerank
    from retrieval.data.video import VideoError

    can_rerank = supports_rerank(searcher.model)  # the release's multimodal models: re-score with the ITM head

    def search(query: str, k: float, min_score: float, group: bool, rerank: float = 0):
        try:
            hits = searcher.search(query, max(int(k), int(rerank or 0)), group_by_video=bool(group),
                                   threshold=None if min_score is None or min_score <= -1 else float(min_score))
            if rerank:
                hits = rerank_hits(searcher, query, hits, int(rerank))[:int(k)]
        except (ValueError, VideoError) as e:  # empty query and the like: say so in the results area
            return f"<div class='vmr-msg'>{html.escape(str(e))}</div>", []
        demo.allowed_paths = _allowed(searcher)  # an `add` may have brought a new library root
        return results_html(searcher, hits), [hit_json(h) for h in hits]

    with gr.Blocks(title="VideoMamba Retrieval", analytics_enabled=False) as demo:  # no phoning home
        gr.Markdown("## VideoMamba Retrieval\nDescribe a moment; each card plays the matching segment.")
        with gr.Row():
            query = gr.Textbox(label="Search", placeholder="a dog catches a frisbee", max_length=MAX_QUERY_CHARS,
                               scale=5, autofocus=True, elem_id="vmr-query")
            go = gr.Button("Search", variant="primary", scale=1, elem_id="vmr-go")
        with gr.Row():
            k = gr.Slider(1, max_k, value=min(10, max_k), step=1, label="Results (k)")
            min_score = gr.Slider(-1.0, 1.0, value=-1.0, step=0.01, label="Minimum score (-1 = off)")
            group = gr.Checkbox(value=True, label="One card per video")
            rerank = gr.Slider(0, 128, value=0, step=1, label="Re-rank top K with the matching head (0 = off)",
                               visible=can_rerank)
        results = gr.HTML("<div class='vmr-msg'>Type a query and press Enter.</div>", elem_id="vmr-results")
        with gr.Accordion("Results as JSON", open=False):
            hits_json = gr.JSON(label="hits")
        with gr.Accordion("Index info", open=False):
            info = gr.JSON(value=searcher.info, label="index")
            refresh = gr.Button("Reload index", size="sm")
        inputs, outputs = [query, k, min_score, group] + ([rerank] if can_rerank else []), [results, hits_json]
        go.click(search, inputs, outputs, api_name="search")
        query.submit(search, inputs, outputs, api_name=False)

        def reload_info():
            searcher.refresh()
            return searcher.info()
        refresh.click(reload_info, None, info, api_name="info")
    return demo


def _allowed(searcher) -> list[str]:
    return list(searcher.roots())


def launch(searcher, host: str = "127.0.0.1", port: int | None = 7860, max_k: int = 50, block: bool = True,
           quiet: bool = False):
    """Start the app bound to `host` (loopback by default); serves media only from the library roots."""
    demo = create_ui(searcher, max_k)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=host, server_port=port, allowed_paths=_allowed(searcher),
                blocked_paths=[str(searcher.index_dir)],  # an index kept inside the library stays private
                prevent_thread_lock=not block, show_error=True, quiet=quiet, css=CSS, footer_links=["api"])
    return demo
