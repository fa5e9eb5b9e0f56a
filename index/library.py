"""Find a library's videos (folder, list file, annotation file), keep paths inside their root, fingerprint files."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from retrieval.data.annotations import VIDEO_EXTENSIONS, detect_dataset, find_video_file, load_annotations
from retrieval.errors import UsageError

LIST_SUFFIXES = (".txt", ".lst", ".list")  # anything else is read as an annotation file


@dataclass(frozen=True)
class Discovered:
    """What a walk found: the library root, files as absolute paths, and entries refused with a reason."""
    root: str
    files: list[str]
    rejected: list[tuple[str, str]]  # (path as given, reason)


def real(path: str | os.PathLike) -> str:
    """Absolute path with symlinks resolved: the form every containment check compares."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when `path` (after resolving symlinks and `..`) is `root` or lies below it."""
    path, root = real(path), real(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def relative_to_root(path: str, root: str) -> str | None:
    """Posix path of `path` relative to `root`, or None when it escapes the root (`..`, absolute, symlink out)."""
    if not is_inside(path, root):
        return None
    # keep the link's own name (not its target's) so a symlink inside the library is listed where the user put it
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel.startswith(".."):  # root itself reached through a symlink: fall back to the resolved form
        rel = os.path.relpath(real(path), real(root))
    return Path(rel).as_posix()


def resolve_inside(root: str, rel: str) -> str:
    """Absolute path for a root-relative `rel`; raises ValueError for anything that would leave the root."""
    if not rel or os.path.isabs(rel) or "\x00" in rel:
        raise ValueError(f"not a library-relative path: {rel!r}")
    candidate = os.path.join(root, rel)
    if not is_inside(candidate, root):
        raise ValueError(f"path leaves the library root: {rel!r}")
    return os.path.abspath(candidate)


def is_video_name(name: str) -> bool:
    return name.lower().endswith(tuple(f".{ext}" for ext in VIDEO_EXTENSIONS))  # videos only: cut into segments


def discover(source: str | os.PathLike, video_root: str | os.PathLike | None = None,
             exclude: tuple[str, ...] = ()) -> Discovered:
    """List the videos of `source`: a folder (walked, hidden folders skipped), a list file (one path a line), a
    retrieval annotation file (VINDLU json list, MSRVTT, ActivityNet, LSMDC) or a single video.

    Entries of list/json files are relative to `video_root` (default: the list file's folder); every file must
    resolve inside the root, so a symlink pointing outside the library is refused here rather than indexed
    and then refused by the app.
    """
    source = os.path.abspath(os.fspath(source))
    if os.path.isdir(source):
        root = real(video_root or source)
        return _walk(source, root, tuple(real(e) for e in exclude))
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no such folder or list file: {source}")
    root = real(video_root or os.path.dirname(source))
    if is_video_name(source):  # a single video
        reason = _check(source, root)
        return Discovered(root, [] if reason else [source], [(source, reason)] if reason else [])
    if source.lower().endswith(LIST_SUFFIXES):
        entries = [(e, e if os.path.isabs(e) else os.path.join(root, e)) for e in _read_list(source)]
    else:
        entries = _read_annotations(source, root)
    files, rejected, seen = [], [], set()
    for given, path in entries:
        path = os.path.normpath(path)
        reason = _check(path, root)
        if reason:
            rejected.append((given, reason))
        elif path not in seen:
            seen.add(path)
            files.append(path)
    return Discovered(root, files, rejected)


def _check(path: str, root: str) -> str | None:
    if not is_inside(path, root):
        return "outside the library root (symlink or path escaping it)"
    if not os.path.isfile(path):
        return "file not found"
    return None


def _walk(folder: str, root: str, exclude: tuple[str, ...]) -> Discovered:
    files, rejected = [], []
    # followlinks=False: a linked folder could loop or lead out of the library
    for dirpath, dirnames, filenames in os.walk(real(folder)):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and real(os.path.join(dirpath, d)) not in exclude)
        for name in sorted(filenames):
            if name.startswith(".") or not is_video_name(name):
                continue
            path = os.path.join(dirpath, name)
            reason = _check(path, root)
            (rejected.append((path, reason)) if reason else files.append(path))
    return Discovered(root, files, rejected)


def _read_list(path: str) -> list[str]:
    """One path a line; blank lines and # comments skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not a list file (one video path a line): {e}") from None


def _read_annotations(path: str, root: str) -> list[tuple[str, str]]:
    """Videos named by a retrieval annotation file (VINDLU json list, MSRVTT, ActivityNet, LSMDC), each once."""
    dataset = detect_dataset(path)
    out, seen = [], set()
    for item in load_annotations(path, dataset):
        name = item.path or item.video_id
        if name in seen:
            continue
        seen.add(name)
        found = find_video_file(root, name, dataset) if not os.path.isabs(name) else None
        out.append((name, str(found) if found else name if os.path.isabs(name) else os.path.join(root, name)))
    return out


def stat_key(path: str) -> tuple[int, int]:
    """(size, mtime_ns): the cheap fingerprint that decides whether a file must be hashed again."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def content_hash(path: str, chunk: int = 1 << 20) -> str:
    """blake2b-128 of the file bytes: tells a touched-but-identical file from a changed one."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return "blake2b:" + h.hexdigest()
