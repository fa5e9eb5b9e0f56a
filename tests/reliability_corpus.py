"""Bad-input corpus for the reliability tests: good clips beside every kind of broken media and annotation file.

`make_corpus(root)` writes a media folder and returns a `Corpus` saying which files are good (and must be
processed) and which are bad (and must be listed with a reason). Everything is generated, seeded, in seconds.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from helpers_media import write_test_audio, write_test_video

# byte offsets (as fractions of the file) where the truncated copies of a good mp4 are cut
TRUNCATE_AT = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


@dataclass
class Corpus:
    root: Path
    good: list[str] = field(default_factory=list)     # relative paths that must be processed
    bad: list[str] = field(default_factory=list)      # relative paths that must be listed with a reason
    notes: dict[str, str] = field(default_factory=dict)  # what each bad file is, for messages


def _try_video(path: Path, size, codecs=("mpeg4", "libx264"), num_frames=4) -> str | None:
    """Write a clip of an odd size with the first encoder that accepts it; the codec used, or None."""
    for codec in codecs:
        try:
            write_test_video(path, num_frames=num_frames, size=size, fps=4, codec=codec)
            return codec
        except Exception:  # noqa: BLE001 - an encoder refusing a size is a finding, not an error
            if path.exists():
                path.unlink()
    return None


def make_corpus(root: Path, seed: int = 0) -> Corpus:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    c = Corpus(root)

    # good clips: plain, 1-frame, and a second container
    write_test_video(root / "good_a.mp4", num_frames=8, size=(32, 24), fps=4)
    write_test_video(root / "good_b.avi", num_frames=8, size=(32, 24), fps=4)
    write_test_video(root / "one_frame.mp4", num_frames=1, size=(32, 24), fps=4)
    c.good += ["good_a.mp4", "good_b.avi", "one_frame.mp4"]
    # odd sizes: an encoder may refuse them (libx264 needs even sizes in yuv420p); whatever gets written must work
    for name, size in (("odd_7x5.avi", (7, 5)), ("wide_8000x10.avi", (8000, 10))):
        codec = _try_video(root / name, size)
        if codec is not None:
            c.good.append(name)
            c.notes[name] = f"written with {codec}"
        else:
            c.notes[name] = "no encoder accepted this size"

    # bad: truncations of a good faststart mp4 at many offsets (moov first, so cut files still open)
    src = write_test_video(root / "_src.mp4", num_frames=16, size=(32, 24), fps=4, faststart=True)
    data = src.read_bytes()
    src.unlink()
    for frac in TRUNCATE_AT:
        name = f"trunc_{int(frac * 1000):04d}.mp4"
        (root / name).write_bytes(data[:int(len(data) * frac)])
        c.bad.append(name)
        c.notes[name] = f"first {frac:.0%} of an mp4"
    (root / "zero.mp4").write_bytes(b"")
    (root / "random_a.mp4").write_bytes(rng.randbytes(4096))
    (root / "random_b.webm").write_bytes(rng.randbytes(1000))
    (root / "random_c.mkv").write_bytes(rng.randbytes(333))
    (root / "text.mp4").write_text("this is not a video\n" * 20)
    write_test_audio(root / "audio_only.m4a")
    (root / "audio_only.mp4").write_bytes((root / "audio_only.m4a").read_bytes())
    (root / "audio_only.m4a").unlink()
    c.bad += ["zero.mp4", "random_a.mp4", "random_b.webm", "random_c.mkv", "text.mp4", "audio_only.mp4"]
    c.notes.update({"zero.mp4": "zero bytes", "random_a.mp4": "random bytes", "random_b.webm": "random bytes",
                    "random_c.mkv": "random bytes", "text.mp4": "a text file", "audio_only.mp4": "audio only"})
    return c


def truncation_survivors(c: Corpus) -> list[str]:
    """Truncated files late enough that a decoder may still read frames: they may be processed or rejected."""
    return [n for n in c.bad if n.startswith("trunc_") and int(n[6:10]) >= 500]


def write_captions(c: Corpus, names: list[str] | None = None) -> None:
    """name.txt caption beside each media file (the folder form `vmr shards` reads)."""
    for name in names if names is not None else c.good + c.bad:
        (c.root / name).with_suffix(".txt").write_text(f"a clip called {Path(name).stem}\n")


def write_generic_annotations(c: Corpus, path: Path, extra_missing: int = 2) -> list[dict]:
    """A VINDLU generic json over every corpus file plus some that do not exist; returns the records."""
    recs = [{"video": n, "caption": f"a clip called {Path(n).stem}"} for n in c.good + c.bad]
    recs += [{"video": f"missing_{i}.mp4", "caption": f"never written {i}"} for i in range(extra_missing)]
    path.write_text(json.dumps(recs))
    return recs


def corrupt_tar_member(shard: Path, out: Path, seed: int = 0) -> list[str]:
    """Copy a shard, replacing the video bytes of every other sample with garbage; returns the corrupted keys."""
    rng = random.Random(seed)
    corrupted = []
    with tarfile.open(shard) as src, tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as dst:
        seen = 0
        for m in src.getmembers():
            payload = src.extractfile(m).read()
            key, ext = m.name.split(".", 1)
            if ext in ("mp4", "avi", "webm", "mkv"):
                if seen % 2 == 1:
                    payload = rng.randbytes(len(payload))
                    corrupted.append(key)
                seen += 1
            info = tarfile.TarInfo(m.name)
            info.size = len(payload)
            dst.addfile(info, io.BytesIO(payload))
    return corrupted


def bad_annotation_files(folder: Path) -> dict[str, Path]:
    """Annotation files that must be refused with AnnotationError (never a traceback of another type)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "missing_fields.json": json.dumps([{"video": "a.mp4"}, {"caption": "no video"}]).encode(),
        "duplicate_ids.json": json.dumps([{"video": "a.mp4", "caption": "x"},
                                          {"video": "a.mp4", "caption": "y"}]).encode(),
        "non_utf8.json": b'[{"video": "a.mp4", "caption": "caf\xe9 \xff\xfe"}]',
        "non_utf8.csv": b"key,vid_key,video_id,sentence\nret0,msr0,video0,caf\xe9\n",
        "empty.json": b"",
        "truncated.json": json.dumps([{"video": "a.mp4", "caption": "x"}] * 3).encode()[:25],
        "wrong_types.json": json.dumps([{"video": 3, "caption": ["a", None]}]).encode(),
        "top_level_number.json": b"42",
        "binary.json": bytes(range(256)),
    }
    out = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out
