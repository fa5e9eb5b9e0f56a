"""WebDataset pipeline: determinism under a seed, exact coverage across ranks/workers, corrupt samples, resume."""
from __future__ import annotations

import io
import json
import logging
import tarfile

import pytest
import torch
from helpers_media import write_test_image, write_test_video

from pretrain.data import EpochLoader, ShardStream, StreamSpec, create_stream, expand_urls, role_shards
from pretrain.shards import ShardOptions, read_annotations, write_shards

pytest.importorskip("webdataset")
pytest.importorskip("av")
N_GOOD = 20


def fake_tokenizer(captions, context_length):
    """Caption -> its length and first byte, enough to check which caption was chosen."""
    out = torch.zeros(len(captions), context_length, dtype=torch.long)
    for i, c in enumerate(captions):
        out[i, 0], out[i, 1] = len(c), ord(c[0])
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[str, set[str]]:
    """5 shards of 4 clips (2 captions each) + a hand-made 6th shard: one corrupt clip, one good clip, one image."""
    root = tmp_path_factory.mktemp("wds")
    vids = root / "videos"
    for i in range(N_GOOD + 1):
        write_test_video(vids / f"c{i:02d}.mp4", num_frames=8, size=(40, 32), fps=8,
                         pattern="noise" if i % 2 else "index")
    anno = [{"video": f"c{i:02d}.mp4", "caption": [f"clip {i}", f"Other words {i}"]} for i in range(N_GOOD)]
    (root / "anno.json").write_text(json.dumps(anno))
    out = root / "shards"
    report = write_shards(read_annotations(root / "anno.json", vids), vids, out, ShardOptions(shard_size=4),
                          progress=False)
    keys = set()
    for s in json.loads((out / "report.json").read_text())["shards"]:
        keys |= set(json.loads((out / ".progress" / s["shard"].replace(".tar", ".json")).read_text())["keys"])
    image = write_test_image(root / "still.png", size=(24, 20)).read_bytes()
    with tarfile.open(out / "shard-000005.tar", "w") as t:
        for key, ext, payload in (("bad_000", "mp4", b"\x00\x00\x00\x18ftypmp42 definitely not a real video"),
                                  ("good_000", "mp4", (vids / f"c{N_GOOD:02d}.mp4").read_bytes()),
                                  ("image_000", "png", image)):
            for name, data in ((f"{key}.{ext}", payload), (f"{key}.json", json.dumps({"captions": [key]}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    assert report["samples"] == N_GOOD
    return f"{out}/shard-{{000000..000005}}.tar", keys | {"good_000", "image_000"}


def spec_for(urls: str, **kw) -> StreamSpec:
    base = dict(sources=[(expand_urls(urls), 1.0)], batch_size=2, num_frames=4, img_size=16,
                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), context_length=4, shuffle_buffer=5,
                seed=3, flip=True)
    base.update(kw)
    return StreamSpec(**base)


def collect(loader: EpochLoader, epoch: int, state=None, limit=None) -> list[dict]:
    out = []
    for b in loader.epoch(epoch, state):
        out.append(b)
        if limit is not None and len(out) == limit:
            break
    return out


def test_expand_and_split(shards):
    urls = expand_urls(shards[0])
    assert len(urls) == 6 and urls[0].endswith("shard-000000.tar")
    assert expand_urls("a-{0..1}.tar::pipe:cat b.tar") == ["a-0.tar", "a-1.tar", "pipe:cat b.tar"]
    parts = [role_shards(urls, 0, 1, 0, r, 2, w, 2) for r in range(2) for w in range(2)]
    assert sorted(u for p in parts for u in p) == sorted(urls)  # disjoint cover
    assert role_shards(urls, 0, 1, 0, 0, 1, 0, 1) != role_shards(urls, 0, 2, 0, 0, 1, 0, 1)  # reshuffled per epoch


def test_deterministic_under_seed(shards):
    a = collect(create_stream(spec_for(shards[0]), fake_tokenizer, num_workers=2), epoch=1)
    b = collect(create_stream(spec_for(shards[0]), fake_tokenizer, num_workers=2), epoch=1)
    assert [x["keys"] for x in a] == [x["keys"] for x in b]
    for x, y in zip(a, b):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["text"], y["text"])
        assert x["video"].shape == (2, 3, 4, 16, 16) and x["video"].dtype == torch.float32
    c = collect(create_stream(spec_for(shards[0]), fake_tokenizer, num_workers=2), epoch=2)
    assert [x["keys"] for x in c] != [x["keys"] for x in a]
    d = collect(create_stream(spec_for(shards[0], seed=4), fake_tokenizer, num_workers=2), epoch=1)
    assert [x["keys"] for x in d] != [x["keys"] for x in a]


def test_every_sample_once_across_ranks_and_workers(shards):
    urls, keys = shards
    seen = []
    for rank in range(2):
        spec = spec_for(urls, rank=rank, world_size=2, train=False, drop_last=False)
        seen += [k for b in collect(create_stream(spec, fake_tokenizer, num_workers=2), epoch=0) for k in b["keys"]]
    assert sorted(seen) == sorted(keys)
    # eval mode: middle frames, first caption, no augmentation
    b = collect(create_stream(spec_for(urls, train=False, drop_last=False), fake_tokenizer), epoch=0)
    assert all(x["text"][i, 1] == ord("c") or x["keys"][i] in ("good_000", "image_000")
               for x in b for i in range(len(x["keys"])))
    # an image is a one-frame video: every frame of the clip is the same picture
    img = next(x["video"][x["keys"].index("image_000")] for x in b if "image_000" in x["keys"])
    assert img.shape == (3, 4, 16, 16) and all(torch.equal(img[:, 0], img[:, t]) for t in range(4))
    # pipe: URLs stream through a shell command and give the same samples
    piped = spec_for("::".join(f"pipe:cat {u}" for u in expand_urls(urls)), train=False, drop_last=False)
    got = [k for x in collect(create_stream(piped, fake_tokenizer), epoch=0) for k in x["keys"]]
    assert sorted(got) == sorted(keys)


def test_corrupt_sample_skipped_and_counted(shards, caplog):
    loader = create_stream(spec_for(shards[0], train=False, drop_last=False), fake_tokenizer)
    with caplog.at_level(logging.WARNING, logger="pretrain.data"):
        got = [k for b in collect(loader, epoch=0) for k in b["keys"]]
    assert "bad_000" not in got and "good_000" in got and len(got) == N_GOOD + 2
    assert loader.skipped == 1
    assert any("bad_000" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_is_exact(shards, workers):
    full = create_stream(spec_for(shards[0]), fake_tokenizer, num_workers=workers)
    want = collect(full, epoch=1)
    assert len(want) >= 6
    first = create_stream(spec_for(shards[0]), fake_tokenizer, num_workers=workers)
    head = collect(first, epoch=1, limit=3)
    state = first.state()
    assert state["batches"] == 3 and state["epoch"] == 1
    again = create_stream(spec_for(shards[0]), fake_tokenizer, num_workers=workers)
    tail = collect(again, epoch=1, state=json.loads(json.dumps(state)))  # state survives JSON (checkpoints)
    assert [b["keys"] for b in head + tail] == [b["keys"] for b in want]
    for x, y in zip(head + tail, want):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["text"], y["text"])
    with pytest.raises(ValueError):
        collect(again, epoch=2, state=state)


def test_caption_choice_and_sources(shards):
    urls = shards[0]
    epochs = [collect(create_stream(spec_for(urls), fake_tokenizer), epoch=e) for e in range(4)]
    picks = {}
    for ep in epochs:
        for b in ep:
            for i, k in enumerate(b["keys"]):
                picks.setdefault(k, set()).add(int(b["text"][i, 1]))
    assert any(len(v) == 2 for v in picks.values())  # a different caption in some epoch
    # two sources: resampled mixing keeps drawing (infinite) and uses both
    half = expand_urls(urls)
    spec = spec_for(urls, sources=[(half[:3], 1.0), (half[3:], 3.0)], resampled=True)
    loader = create_stream(spec, fake_tokenizer)
    batches = collect(loader, epoch=0, limit=20)
    assert len(batches) == 20
    ids = torch.cat([b["video_ids"] for b in batches])
    assert ids.unique().numel() > 1


def test_shardstream_sentinel_and_tags(shards):
    stream = ShardStream(spec_for(shards[0]), fake_tokenizer)
    stream.set_epoch(0)
    items = list(stream)
    assert items[-1]["_end"] and all(not i.get("_end") for i in items[:-1])
    raws = [i["_raw"] for i in items]
    assert raws == sorted(raws) and raws[-1] == N_GOOD + 3  # every raw sample counted, the corrupt one too
    assert items[-1]["_skipped"] == 1


def test_reverse_pairs_put_the_backwards_clip_in_the_same_batch(tmp_path):
    vids = tmp_path / "videos"
    for i in range(6):
        write_test_video(vids / f"r{i}.mp4", num_frames=8, size=(32, 32), fps=8, pattern="index")
    anno = [{"video": f"r{i}.mp4", "caption": [f"a{i} forward", f"b{i} forward"],
             **({"reverse_caption": [f"a{i} backward", f"b{i} backward"]} if i % 2 == 0 else {})} for i in range(6)]
    (tmp_path / "anno.json").write_text(json.dumps(anno))
    write_shards(read_annotations(tmp_path / "anno.json", vids), vids, tmp_path / "shards", ShardOptions(shard_size=3),
                 progress=False)
    urls = str(tmp_path / "shards" / "shard-{000000..000001}.tar")
    plain = [b for b in collect(create_stream(spec_for(urls, batch_size=3, flip=False),
                                              lambda c, context_length: c), 0)]
    assert not any("#reversed" in k for b in plain for k in b["keys"])
    paired = collect(create_stream(spec_for(urls, batch_size=3, flip=False, reverse_pairs=1.0),
                                   lambda c, context_length: c), 0)
    twins = 0
    for b in paired:
        for j, key in enumerate(b["keys"]):
            if not key.endswith("#reversed"):
                continue
            twins += 1
            assert b["keys"][j - 1] == key.removesuffix("#reversed")  # right after its forward clip
            fwd, back = b["captions"][j - 1], b["captions"][j]
            assert back == fwd.replace("forward", "backward")  # the same phrasing, reversed
            assert torch.equal(b["video"][j], b["video"][j - 1].flip(1))  # same crop, frames in reverse order
            assert b["video_ids"][j] != b["video_ids"][j - 1]
    assert twins >= 2
    assert all(not k.endswith("#reversed") for b in paired for k in b["keys"][:1])  # never split from its clip
