"""Retrieval annotation loaders (MSRVTT, ActivityNet, LSMDC, VINDLU/UMT lists, folders), read as the community does."""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VmrError

# The one list of media files (eval, shards, training's data and check, index, folders), most common first.
# Images are one-frame videos (image-text pairs); the index takes only videos, which it cuts into segments.
VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "gif", "m4v")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
DATASETS = ("msrvtt", "activitynet", "lsmdc", "generic")


class AnnotationError(VmrError, ValueError):
    """An annotation file is unreadable, malformed, or of another dataset than requested."""


@dataclass
class VideoText:
    """One video (or segment) and its captions; each caption is one text query whose answer is this video.

    video_id: the id the dataset uses for the file, without extension ("video9770", "v_uqiMw7tQ1Cc",
      an LSMDC clip id, or a relative path for VINDLU lists and folders).
    captions: non-empty strings (an ActivityNet paragraph is one caption); none at all only from a
      `strict=False` read.
    start, end: segment in seconds within the file, None = the whole file.
    path: the file as the annotation names it ("video9770.mp4", "<movie>/<clip>.avi") relative
      to the videos folder, or the absolute path for `load_folder` (the folder resolved, the file's own
      name kept); None when not named.
    """

    video_id: str
    captions: list[str]
    start: float | None = None
    end: float | None = None
    path: str | None = field(default=None, compare=False)
    meta: dict = field(default_factory=dict, compare=False)  # fields a training sample keeps (duration, ...)


# --- reading ---------------------------------------------------------------------------------

def _read_text(path) -> str:
    """File -> str; non-UTF-8 bytes become an AnnotationError naming offset and line (no traceback noise)."""
    path = Path(path)
    if not path.exists():
        raise AnnotationError(f"{path}: no such file")
    if path.is_dir():
        raise AnnotationError(f"{path}: is a folder, expected an annotation file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise AnnotationError(
            f"{path}: not valid UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} (line {line}, "
            f"column {column}); re-save the file as UTF-8") from None
    return text.removeprefix("\ufeff")  # a BOM from Windows editors


def _no_duplicate_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise AnnotationError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _load_json(text: str, path) -> object:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except AnnotationError as e:
        raise AnnotationError(f"{path}: {e}") from None


# --- format detection ------------------------------------------------------------------------

_KIND_TEXT = {
    "anet_dict": "an ActivityNet Captions file (object keyed by v_ ids with sentences and timestamps)",
    "anet_list": "a VINDLU/UMT ActivityNet list (v_ videos with timestamps)",
    "msrvtt_list": "a VINDLU/UMT MSRVTT list (videoN.mp4 entries)",
    "json_list": "a VINDLU/UMT list of {video, caption}",
    "msrvtt_csv": "an MSRVTT CLIP4Clip csv (header key,vid_key,video_id,sentence)",
    "msrvtt_data": "MSRVTT_data.json (every caption of every MSRVTT video)",
    "msrvtt_split": "an MSRVTT split list (video_id only, no captions)",
    "lsmdc_tsv": "an LSMDC tab-separated file (6 fields, no header)",
}
# Which file kinds each dataset accepts; a kind outside its row is the wrong dataset.
_ACCEPTS = {
    "msrvtt": {"msrvtt_csv", "msrvtt_list", "msrvtt_data", "msrvtt_split", "json_list"},
    "activitynet": {"anet_dict", "anet_list", "json_list"},
    "lsmdc": {"lsmdc_tsv", "json_list"},
    "generic": {"json_list", "msrvtt_list", "anet_list"},
}
_AUTO = {"anet_dict": "activitynet", "anet_list": "activitynet", "msrvtt_list": "msrvtt", "json_list": "generic",
         "msrvtt_csv": "msrvtt", "msrvtt_data": "msrvtt", "msrvtt_split": "msrvtt", "lsmdc_tsv": "lsmdc"}
_NAME_KEYS = ("video", "image", "video_id")          # a list record's media file, first one set wins
_CAPTION_KEYS = ("caption", "captions", "sentence")  # and its caption(s)
MSRVTT_DATA = "MSRVTT_data.json"  # the captions of an MSRVTT split list sit in this file beside it


def _json_kind(obj) -> str:
    if isinstance(obj, dict):
        if "videos" in obj and "sentences" in obj:
            return "msrvtt_data"
        values = list(obj.values())
        if values and all(isinstance(v, dict) and "sentences" in v for v in values[:50]):
            return "anet_dict"
        raise AnnotationError("JSON object is neither an ActivityNet Captions file (values need 'sentences') "
                              f"nor {MSRVTT_DATA} ('videos' and 'sentences')")
    if isinstance(obj, list):
        if not obj:
            raise AnnotationError("JSON list is empty")
        head = [r for r in obj[:50] if isinstance(r, dict)]
        names = [str(_first(r, _NAME_KEYS)) for r in head]
        if any("timestamp" in r for r in head) and all(Path(v).name.startswith("v_") for v in names):
            return "anet_list"
        if names and all(re.fullmatch(r"video\d+(\.\w+)?", v) for v in names):
            return "msrvtt_list"
        return "json_list"
    raise AnnotationError(f"JSON top level is a {type(obj).__name__}, expected a list or an object")


def _text_kind(text: str) -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first:
        raise AnnotationError("file is empty")
    header = [c.strip() for c in first.split(",")]
    if "video_id" in header and "sentence" in header:
        return "msrvtt_csv"
    if header == ["video_id"]:
        return "msrvtt_split"
    if "\t" in first:
        return "lsmdc_tsv"
    raise AnnotationError("unrecognised format (expected JSON, an MSRVTT csv or an LSMDC tab-separated file)")


def _parse(path):
    """-> (kind, the parsed JSON or, for text formats, the text)."""
    text = _read_text(path)
    data = _load_json(text, path) if text.lstrip()[:1] in ("[", "{") else text
    try:
        return (_text_kind(text) if data is text else _json_kind(data)), data
    except AnnotationError as e:
        raise AnnotationError(f"{path}: {e}") from None


def detect_dataset(path) -> str:
    """The dataset a file's shape says it belongs to: "msrvtt", "activitynet", "lsmdc" or "generic"."""
    return _AUTO[_parse(path)[0]]


# --- loaders ---------------------------------------------------------------------------------

def read_annotation_file(path, paragraph: bool = False, strict: bool = True) -> list[VideoText]:
    """Every entry of an annotation file of any format above, in file order (a video listed twice stays twice).

    strict (evaluation): every entry has captions, each non-empty and kept as written. Not strict (training
    data, `vmr shards`, the tokenizer trainer): captions are stripped, empty ones dropped, and an entry may be
    left with none. Malformed files raise AnnotationError either way.
    """
    kind, data = _parse(path)
    return _PARSERS[kind](data, path, paragraph, strict)


def load_annotations(path, dataset: str = "auto", paragraph: bool = True) -> list[VideoText]:
    """Load a retrieval annotation file; `dataset` "auto" detects it, otherwise the file must match.

    paragraph: ActivityNet as paragraph-to-video (all sentences of a video, each stripped, joined
    with one space; whole video) as in the published protocol; False gives one query per
    sentence with its segment.
    """
    if dataset not in DATASETS + ("auto",):
        raise AnnotationError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)} or auto")
    kind, data = _parse(path)
    if dataset == "auto":
        dataset = _AUTO[kind]
    elif kind not in _ACCEPTS[dataset]:
        raise AnnotationError(f"{path}: looks like {_KIND_TEXT[kind]}, not an annotation file for "
                              f"dataset {dataset!r}")
    items = _PARSERS[kind](data, path, paragraph and dataset == "activitynet", True)
    if dataset != "generic" and (dataset != "activitynet" or paragraph):
        _check_unique(items, path)
    return items


def load_msrvtt(path) -> list[VideoText]:
    """MSRVTT 1k-A test: CLIP4Clip csv (key,vid_key,video_id,sentence) or VINDLU json; 1000 videos, 1 caption each."""
    return load_annotations(path, "msrvtt")


def load_activitynet(path, paragraph: bool = True) -> list[VideoText]:
    """ActivityNet Captions val_1 (`val_1.json` or VINDLU `anet_ret_val_1.json`): paragraph-to-video by default."""
    return load_annotations(path, "activitynet", paragraph=paragraph)


def load_lsmdc(path) -> list[VideoText]:
    """LSMDC tab-separated file (6 fields, no header); videos live at `<movie>/<clip_id>.avi`."""
    return load_annotations(path, "lsmdc")


def load_generic(path) -> list[VideoText]:
    """VINDLU/UMT list of {video, caption: str | [str]}; several captions = several queries for that video."""
    return load_annotations(path, "generic")


def _check_unique(items: list[VideoText], path) -> None:
    seen, dups = set(), []
    for item in items:
        key = (item.video_id, item.start, item.end)
        if key in seen:
            dups.append(item.video_id)
        seen.add(key)
    if dups:
        shown = ", ".join(sorted(set(dups))[:10])
        raise AnnotationError(f"{path}: {len(dups)} duplicate video id(s), each must appear once: {shown}"
                              + (" ..." if len(set(dups)) > 10 else ""))


def _strip_ext(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return stem if dot and ext.lower() in MEDIA_EXTENSIONS else name


def _first(record: dict, keys: tuple[str, ...]):
    return next((record[k] for k in keys if record.get(k) not in (None, "")), None)


def _captions(value, where: str, strict: bool, paragraph: bool = False) -> list[str]:
    """A caption field (a string or a list of strings) -> the entry's captions, by the rules of `strict`."""
    if value is None and not strict:
        return []
    captions = [value] if isinstance(value, str) else value
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions) or (strict and not captions):
        raise AnnotationError(f"{where}: 'caption' must be a string or a non-empty list of strings")
    if paragraph:
        return [_paragraph(captions, where)]
    if not strict:
        return [c.strip() for c in captions if c.strip()]
    if any(not c.strip() for c in captions):
        raise AnnotationError(f"{where}: empty caption")
    return list(captions)


def _seconds(value, where: str) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: a time must be a number of seconds, got {value!r}") from None


def _csv_rows(text: str, path, columns: tuple[str, ...]):
    """(line number, {column: field}) of a comma-separated file after its header row, blank rows skipped."""
    # Read like CLIP4Clip's pandas.read_csv (header row, comma separated, quoted fields allowed).
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(([c.strip() for c in row] for row in reader if any(c.strip() for c in row)), [])
    if not set(columns) <= set(header):
        raise AnnotationError(f"{path}: the header row needs the columns {', '.join(columns)}")
    for row in reader:
        if row and any(c.strip() for c in row):
            if len(row) != len(header):
                raise AnnotationError(f"{path}: line {reader.line_num}: expected {len(header)} fields "
                                      f"({','.join(header)}), got {len(row)}")
            yield reader.line_num, dict(zip(header, row))


def _parse_msrvtt_csv(text: str, path, paragraph: bool, strict: bool) -> list[VideoText]:
    items = []
    for line, row in _csv_rows(text, path, ("video_id", "sentence")):
        video_id, sentence = row["video_id"].strip(), row["sentence"]
        if not video_id:
            raise AnnotationError(f"{path}: line {line}: empty video_id")
        if strict and not sentence.strip():
            raise AnnotationError(f"{path}: line {line}: empty caption for {video_id}")
        captions = [sentence] if strict else [sentence.strip()] if sentence.strip() else []
        items.append(VideoText(video_id, captions, path=f"{video_id}.mp4"))
    if not items:
        raise AnnotationError(f"{path}: no rows after the header")
    return items


def _parse_msrvtt_split(text: str, path, paragraph: bool, strict: bool) -> list[VideoText]:
    """MSRVTT_train.9k.csv and the like list only ids; their captions come from MSRVTT_data.json beside them."""
    data = Path(path).parent / MSRVTT_DATA
    if not data.is_file():
        raise AnnotationError(f"{path}: looks like {_KIND_TEXT['msrvtt_split']} and there is no {MSRVTT_DATA} "
                              "beside it; use a captioned file (MSRVTT_JSFUSION_test.csv or msrvtt_ret_test1k.json)")
    kind, obj = _parse(data)
    if kind != "msrvtt_data":  # (also keeps a split list named MSRVTT_data.json from reading itself)
        raise AnnotationError(f"{data}: expected {_KIND_TEXT['msrvtt_data']}, found {_KIND_TEXT[kind]}")
    by_id = {v.video_id: v for v in _parse_msrvtt_data(obj, data, False, False)}
    items = []
    for line, row in _csv_rows(text, path, ("video_id",)):
        video_id = row["video_id"].strip()
        item = by_id.get(video_id, VideoText(video_id, [], path=f"{video_id}.mp4"))
        if strict and not item.captions:
            raise AnnotationError(f"{path}: line {line}: {video_id} has no caption in {data}")
        items.append(item)
    return items


def _parse_msrvtt_data(obj: dict, path, paragraph: bool, strict: bool) -> list[VideoText]:
    """MSRVTT_data.json: one entry per video (in order of its first sentence) with all its captions."""
    sentences = obj["sentences"]
    if not isinstance(sentences, list) or not all(isinstance(s, dict) and "video_id" in s for s in sentences):
        raise AnnotationError(f"{path}: MSRVTT 'sentences' must be a list of {{video_id, caption}} records")
    by_video: dict[str, list[str]] = {}
    for i, sentence in enumerate(sentences):
        where = f"{path}: sentence {i}"
        video_id = sentence["video_id"]
        if not isinstance(video_id, (str, int)) or video_id == "":
            raise AnnotationError(f"{where}: 'video_id' must be a non-empty string")
        by_video.setdefault(str(video_id), []).extend(_captions(sentence.get("caption"), where, strict))
    return [VideoText(v, captions, path=f"{v}.mp4") for v, captions in by_video.items()]


def _parse_anet_dict(obj: dict, path, paragraph: bool, strict: bool) -> list[VideoText]:
    items = []
    for key, record in obj.items():
        sentences = record.get("sentences") if isinstance(record, dict) else None
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise AnnotationError(f"{path}: {key}: 'sentences' must be a list of strings")
        if paragraph:
            items.append(VideoText(key, [_paragraph(sentences, f"{path}: {key}")]))
            continue
        stamps = record.get("timestamps")
        if not isinstance(stamps, list) or len(stamps) != len(sentences) or \
                not all(isinstance(t, list) and len(t) == 2 for t in stamps):
            raise AnnotationError(f"{path}: {key}: needs one [start, end] timestamp per sentence")
        for sentence, (start, end) in zip(sentences, stamps):
            if sentence.strip() or strict:
                items.append(VideoText(key, _captions(sentence.strip(), f"{path}: {key}", strict),
                                       _seconds(start, f"{path}: {key}"), _seconds(end, f"{path}: {key}")))
    return items


def _paragraph(sentences: list[str], where: str) -> str:
    # Each sentence stripped (most start with spaces), joined with one space: the CLIP4Clip/VINDLU paragraph.
    text = " ".join(s.strip() for s in sentences if s.strip())
    if not text:
        raise AnnotationError(f"{where}: empty caption")
    return text


def _parse_json_list(obj: list, path, paragraph: bool, strict: bool) -> list[VideoText]:
    items = []
    for i, record in enumerate(obj):
        where = f"{path}: record {i}"
        if not isinstance(record, dict):
            raise AnnotationError(f"{where}: expected an object with 'video' (or 'image') and 'caption'")
        video = _first(record, _NAME_KEYS)
        video = str(video) if isinstance(video, int) and not isinstance(video, bool) else video
        if not isinstance(video, str) or not video.strip():
            raise AnnotationError(f"{where}: 'video' (or 'image') must be a non-empty string")
        where = f"{where} ({video})"
        captions = _captions(_first(record, _CAPTION_KEYS), where, strict, paragraph)
        meta = {k: record[k] for k in ("duration", "start", "end") if k in record}
        if record.get("reverse_caption") is not None:  # the clip played backwards (pretraining's reverse_pairs)
            meta["reverse_caption"] = _captions(record["reverse_caption"], f"{where}: reverse_caption", False)
        items.append(VideoText(_strip_ext(video), captions, _seconds(record.get("start"), where),
                               _seconds(record.get("end"), where), path=video, meta=meta))
    return items


_TIME = re.compile(r"^\d+([.:]\d+)*$")
_LSMDC_FIELDS = ("CLIP_ID", "START_ALIGNED", "END_ALIGNED", "START_EXTRACTED", "END_EXTRACTED", "SENTENCE")


def _parse_lsmdc(text: str, path, paragraph: bool, strict: bool) -> list[VideoText]:
    # No header: the first line is data (pandas' default header=0 silently drops it).
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 6:
            raise AnnotationError(f"{path}: line {number}: expected 6 tab-separated fields "
                                  f"({' '.join(_LSMDC_FIELDS)}), got {len(fields)}")
        for name, value in zip(_LSMDC_FIELDS[1:5], fields[1:5]):
            if not _TIME.match(value.strip()):
                raise AnnotationError(f"{path}: line {number}: {name} is not a time: {value!r}"
                                      + (" (LSMDC files have no header row)" if number == 1 else ""))
        clip_id, sentence = fields[0].strip(), fields[5].strip()
        if not clip_id:
            raise AnnotationError(f"{path}: line {number}: empty CLIP_ID")
        if strict and not sentence:
            raise AnnotationError(f"{path}: line {number}: empty caption for {clip_id}")
        items.append(VideoText(clip_id, [sentence] if sentence else [],
                               path=f"{lsmdc_movie(clip_id)}/{clip_id}.avi"))
    if not items:
        raise AnnotationError(f"{path}: no rows")
    return items


# kind -> parser(data, path, paragraph, strict); paragraph matters to ActivityNet only
_PARSERS = {"msrvtt_csv": _parse_msrvtt_csv, "msrvtt_split": _parse_msrvtt_split, "msrvtt_data": _parse_msrvtt_data,
            "anet_dict": _parse_anet_dict, "lsmdc_tsv": _parse_lsmdc, "anet_list": _parse_json_list,
            "msrvtt_list": _parse_json_list, "json_list": _parse_json_list}


def lsmdc_movie(clip_id: str) -> str:
    """Movie folder of an LSMDC clip: the clip id minus its trailing `_<start>-<end>`."""
    head, sep, tail = clip_id.rpartition("_")
    return head if sep and "-" in tail else clip_id


# --- files -----------------------------------------------------------------------------------

def _candidates(video_id: str, dataset: str) -> list[str]:
    names = [video_id]
    if dataset == "activitynet":
        # CLIP4Clip strips the v_ prefix to find files, other tools keep it; accept both layouts.
        name = Path(video_id).name
        parent = video_id[: len(video_id) - len(name)]
        names.append(parent + (name[2:] if name.startswith("v_") else "v_" + name))
    elif dataset == "lsmdc":
        names.insert(0, f"{lsmdc_movie(video_id)}/{video_id}")
    return names


def find_video_file(videos_dir, video_id: str, dataset: str = "generic") -> Path | None:
    """The file for `video_id` under `videos_dir` with any common extension, or None.

    ActivityNet tries `v_<id>` and `<id>`; LSMDC tries `<movie>/<clip_id>` then a flat layout. An id
    that already ends with an extension is tried as is first.
    """
    root = Path(videos_dir)
    for name in _candidates(video_id, dataset):
        exact = root / name
        if exact.suffix.lower().lstrip(".") in MEDIA_EXTENSIONS and exact.is_file():
            return exact
        stem = _strip_ext(name)
        for ext in MEDIA_EXTENSIONS:
            for candidate in (root / f"{stem}.{ext}", root / f"{stem}.{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def load_folder(videos_dir, require_captions: bool = True) -> list[VideoText]:
    """A plain folder: `name.mp4` (or any media extension) + `name.txt` with one caption per line.

    Searched recursively, sorted by path; video_id is the path relative to the folder without
    extension. Videos without a caption file (or with an empty one) are skipped when
    `require_captions`, else kept with no captions.
    """
    root = Path(videos_dir)
    if not root.is_dir():
        raise AnnotationError(f"{root}: not a folder")
    items = []
    for file in sorted(p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in MEDIA_EXTENSIONS):
        if not file.is_file():
            continue
        txt = file.with_suffix(".txt")
        captions = [line.strip() for line in _read_text(txt).splitlines() if line.strip()] if txt.is_file() else []
        if captions or not require_captions:
            rel = file.relative_to(root)
            items.append(VideoText(rel.with_suffix("").as_posix(), captions, path=str(root.resolve() / rel)))
    return items
