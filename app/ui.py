"""Gradio UI: header (index counts, model, its card), example queries, search box, k and threshold controls, result
cards playing the matched segment with a "more like this" button, index info panel.

Widgets only: every answer comes from an `index.searcher.Searcher`. Media are served by Gradio's file route,
limited (`allowed_paths`) to the index's library roots; Gradio resolves `..` and symlinks before that check.
"""
from __future__ import annotations

import base64
import html
import logging
from urllib.parse import quote

from app.card import card_markdown, example_queries
from app.table import SCORE_HELP, clock, more_segments

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
.vmr-like {margin-top: 6px; font-size: 13px; padding: 2px 10px; border-radius: 6px; cursor: pointer;
           border: 1px solid var(--border-color-primary); background: var(--button-secondary-background-fill);}
.vmr-legend {font-size: 12px; color: var(--body-text-color-subdued); margin-top: 8px;}
"""
# "More like this" buttons live inside the results HTML: one delegated listener hands the card's segment id to a
# hidden textbox and presses a hidden button, which runs the /more_like_this event.
JS_HEAD = """<script>
document.addEventListener('click', (event) => {
  const button = event.target.closest('.vmr-like');
  if (!button) return;
  const box = document.querySelector('#vmr-like-id textarea, #vmr-like-id input');
  const go = document.querySelector('#vmr-like-go');
  if (!box || !go) return;
  box.value = button.dataset.segment + ' ' + button.dataset.label;
  box.dispatchEvent(new Event('input', {bubbles: true}));
  go.click();
});
</script>"""
EMPTY = ("Type what you are looking for and press Enter, or click an example. Each card plays the matching "
         "segment of a video.")


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
    others = hit.segments[1:]
    times = ", ".join(f"{clock(s.start)}–{clock(s.end)} ({s.score:.3f})" for s in others[:5])
    more_html = (f"<div class='vmr-more'>{more_segments(len(others))}: {times}{', ...' if len(others) > 5 else ''}"
                 "</div>") if others else ""
    name = html.escape(hit.path)
    seg_id = hit.segments[0].id if hit.segments else ""
    return (f"<div class='vmr-card' data-rank='{hit.rank}' data-path='{html.escape(hit.path, quote=True)}'>{media}"
            f"<div class='vmr-meta'><span class='vmr-rank'>#{hit.rank}</span>"
            f"<span class='vmr-path' title='{html.escape(path, quote=True)}'>{name}</span>"
            f"<span class='vmr-time'>{clock(hit.start)}–{clock(hit.end)}</span>"
            f"<span class='vmr-score' title='cosine similarity, -1..1'>{hit.score:.3f}</span></div>{more_html}"
            f"<button class='vmr-like' data-segment='{seg_id}' "
            f"data-label='{html.escape(f'{hit.path} {clock(hit.start)}–{clock(hit.end)}', quote=True)}' "
            "title='segments that look like this one'>"
            "More like this</button></div>")


def results_html(searcher, hits, title: str = "") -> str:
    if not hits:
        return "<div class='vmr-msg'>No matching videos.</div>"
    head = f"<div class='vmr-msg vmr-title'>{html.escape(title)}</div>" if title else ""
    return (head + "<div class='vmr-results'>" + "".join(card_html(searcher, h) for h in hits) + "</div>"
            f"<div class='vmr-legend'>{html.escape(SCORE_HELP)}</div>")


def header_markdown(searcher) -> str:
    """Title, what the index holds, which model, and the model's domain in one line."""
    info = searcher.info()
    card = info.get("card")
    lines = ["## VideoMamba Retrieval",
             f"**{info['files']} videos, {info['segments']} segments** · model `{info['model_id']}`"]
    if card is None:
        lines[-1] += " · no model card (saved before cards existed)"
    elif card.get("summary"):
        lines[-1] += f" · trained on {card['domain']} video: {card['summary']}"
    lines.append("Describe a moment; each card plays the matching segment. A score is the cosine similarity of "
                 "the query's and the segment's embeddings (-1 to 1, higher is closer).")
    return "\n\n".join(lines)


def hit_json(hit) -> dict:
    """A hit for the JSON output; "video" not "path", since gradio_client downloads any dict with a "path"."""
    d = hit.to_dict()
    d["video"] = d.pop("path")
    return d


def create_ui(searcher, max_k: int = 50):
    """The Blocks app. API: /search (query, k, min_score, group) -> (html, hits json); /more_like_this (segment id,
    k, min_score, group) -> (html, hits json); /info -> dict."""
    import gradio as gr

    from index.rerank import rerank_hits, supports_rerank
    from index.searcher import MAX_QUERY_CHARS
    from retrieval.data.video import VideoError

    can_rerank = supports_rerank(searcher.model)  # the release's multimodal models: re-score with the ITM head

    def threshold(min_score):
        return None if min_score is None or min_score <= -1 else float(min_score)

    def answer(hits, title: str = ""):
        demo.allowed_paths = _allowed(searcher)  # an `add` may have brought a new library root
        return results_html(searcher, hits, title), [hit_json(h) for h in hits]

    def search(query: str, k: float, min_score: float, group: bool, rerank: float = 0):
        try:
            hits = searcher.search(query, max(int(k), int(rerank or 0)), group_by_video=bool(group),
                                   threshold=threshold(min_score))
            if rerank:
                hits = rerank_hits(searcher, query, hits, int(rerank))[:int(k)]
        except (ValueError, VideoError) as e:  # empty query and the like: say so in the results area
            return f"<div class='vmr-msg'>{html.escape(str(e))}</div>", []
        return answer(hits)

    def more_like(segment: str, k: float, min_score: float, group: bool):
        """`segment`: "ID label", the label naming the card it came from."""
        seg_id, _, label = (segment or "").strip().partition(" ")
        try:
            hits = searcher.search_segment(int(seg_id), int(k), group_by_video=bool(group),
                                           threshold=threshold(min_score))
        except ValueError as e:
            return f"<div class='vmr-msg'>{html.escape(str(e))}</div>", []
        return answer(hits, f"More like {label or 'segment ' + seg_id} (nearest by video embedding; "
                            "that segment itself left out):")

    card = getattr(searcher.model, "card", None)
    with gr.Blocks(title="VideoMamba Retrieval", analytics_enabled=False) as demo:  # no phoning home
        gr.Markdown(lambda: header_markdown(searcher), elem_id="vmr-header")
        examples = example_queries(card)
        with gr.Row():
            query = gr.Textbox(label="Search", placeholder=examples[-1] if examples else "a dog catches a frisbee",
                               max_length=MAX_QUERY_CHARS, scale=5, autofocus=True, elem_id="vmr-query")
            go = gr.Button("Search", variant="primary", scale=1, elem_id="vmr-go")
        if examples:
            shown = gr.Examples([[q] for q in examples], inputs=[query], label="Examples (click one to search)",
                                elem_id="vmr-examples", examples_per_page=len(examples))
        with gr.Accordion("What this model knows", open=False, elem_id="vmr-knows"):
            gr.Markdown(card_markdown(card))
        with gr.Row():
            k = gr.Slider(1, max_k, value=min(10, max_k), step=1, label="Results (k)")
            min_score = gr.Slider(-1.0, 1.0, value=-1.0, step=0.01,
                                  label="Minimum score: cosine similarity, -1..1 (-1 = off)")
            group = gr.Checkbox(value=True, label="One card per video")
            rerank = gr.Slider(0, 128, value=0, step=1, label="Re-rank top K with the matching head (0 = off)",
                               visible=can_rerank)
        results = gr.HTML(f"<div class='vmr-msg vmr-empty'>{html.escape(EMPTY)}</div>", elem_id="vmr-results")
        like_id = gr.Textbox(visible="hidden", elem_id="vmr-like-id")
        like_go = gr.Button("more like this", visible="hidden", elem_id="vmr-like-go")
        with gr.Accordion("Results as JSON", open=False):
            hits_json = gr.JSON(label="hits")
        with gr.Accordion("Index info", open=False):
            info = gr.JSON(value=searcher.info, label="index")
            refresh = gr.Button("Reload index", size="sm")
        inputs, outputs = [query, k, min_score, group] + ([rerank] if can_rerank else []), [results, hits_json]
        go.click(search, inputs, outputs, api_name="search")
        query.submit(search, inputs, outputs, api_name=False)
        like_go.click(more_like, [like_id, k, min_score, group], outputs, api_name="more_like_this")
        if examples:
            shown.load_input_event.then(search, inputs, outputs, api_visibility="undocumented")

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
                prevent_thread_lock=not block, show_error=True, quiet=quiet, css=CSS, head=JS_HEAD,
                footer_links=["api"])
    return demo
