"""Annotation loaders on the real MSRVTT/ActivityNet files, a generated LSMDC file, and broken inputs."""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from retrieval.data.annotations import (
    AnnotationError,
    VideoText,
    detect_dataset,
    find_video_file,
    load_activitynet,
    load_annotations,
    load_folder,
    load_generic,
    load_lsmdc,
    load_msrvtt,
    lsmdc_movie,
)

FIXTURES = Path(__file__).parent / "fixtures" / "annotations"
MSRVTT_CSV = FIXTURES / "msrvtt" / "MSRVTT_JSFUSION_test.csv"
MSRVTT_JSON = FIXTURES / "msrvtt" / "msrvtt_ret_test1k.json"
SHA256 = {  # of the original files (fixtures/annotations/SOURCES.md)
    "val_1.json": "8b4ac09c19e17a192c2cedbfd8df6fcaa60b3d09bf445924ac581ea2722210b7",
    "anet_ret_val_1.json": "1dec06f6c27905f2d68c1c91171968dc9e4eb7ae7245e6d04e2bd4505816d024",
}

LSMDC_ROWS = [  # documented layout: CLIP_ID, 4 times, sentence; no header
    ("1006_Slumdog_Millionaire_01.25.49.077-01.25.54.718", "01.25.49.077", "01.25.54.718", "01.25.49.077",
     "01.25.54.718", "SOMEONE runs across the rooftop."),
    ("1006_Slumdog_Millionaire_01.26.00.100-01.26.03.000", "01.26.00.100", "01.26.03.000", "01.26.00.100",
     "01.26.03.000", "He looks down at the crowd."),
    ("0001_American_Beauty_00.00.43.000-00.00.48.000", "00.00.43.000", "00.00.48.000", "00.00.43.000",
     "00.00.48.000", "A street seen from above."),
]


@pytest.fixture(scope="module")
def anet_files(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("anet")
    files = {}
    for name, digest in SHA256.items():
        data = gzip.decompress((FIXTURES / "activitynet" / f"{name}.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == digest  # byte-exact original
        files[name] = out / name
        files[name].write_bytes(data)
    return files


def write_lsmdc(path: Path, rows=LSMDC_ROWS) -> Path:
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- real files ----------------------------------------------------------------------------------

def test_msrvtt_csv_and_json_give_the_same_1000_pairs():
    a, b = load_msrvtt(MSRVTT_CSV), load_msrvtt(MSRVTT_JSON)
    assert len(a) == 1000 and a == b
    assert len({x.video_id for x in a}) == 1000
    assert a[0] == VideoText("video9770", ["a person is connecting something to system"])
    assert all(len(x.captions) == 1 and x.start is None for x in a)
    assert load_annotations(MSRVTT_CSV) == a and detect_dataset(MSRVTT_JSON) == "msrvtt"


def test_activitynet_val_1_and_vindlu_list_give_the_same_4917_paragraphs(anet_files):
    a = load_activitynet(anet_files["val_1.json"])
    b = load_activitynet(anet_files["anet_ret_val_1.json"])
    assert len(a) == len(b) == 4917 and a == b
    assert len({x.video_id for x in a}) == 4917
    assert a[0].video_id == "v_uqiMw7tQ1Cc"
    assert a[0].captions == ["A weight lifting tutorial is given. The coach helps the guy in red with the "
                             "proper body placement and lifting technique."]
    raw = json.loads(anet_files["val_1.json"].read_text())
    # each sentence stripped (most start with spaces), joined by one space; inner spaces kept verbatim
    assert [x.captions for x in a] == [[" ".join(s.strip() for s in v["sentences"])] for v in raw.values()]
    assert not any(x.captions[0].startswith(" ") or ".  " in x.captions[0] for x in a)
    assert detect_dataset(anet_files["anet_ret_val_1.json"]) == "activitynet"
    sentences = load_activitynet(anet_files["val_1.json"], paragraph=False)
    assert len(sentences) == 17505 and sentences[0].start == 0.28 and sentences[0].end == 55.15


def test_wrong_dataset_is_detected(anet_files, tmp_path):
    lsmdc = write_lsmdc(tmp_path / "lsmdc.csv")
    cases = [(anet_files["val_1.json"], "msrvtt", "ActivityNet"), (anet_files["anet_ret_val_1.json"], "msrvtt",
             "ActivityNet"), (MSRVTT_CSV, "activitynet", "MSRVTT"), (MSRVTT_JSON, "activitynet", "MSRVTT"),
             (lsmdc, "msrvtt", "LSMDC"), (MSRVTT_CSV, "lsmdc", "MSRVTT"), (anet_files["val_1.json"], "generic",
             "ActivityNet")]
    for path, dataset, looks_like in cases:
        with pytest.raises(AnnotationError, match=f"looks like .*{looks_like}.*not an annotation file for dataset"):
            load_annotations(path, dataset)


# --- LSMDC ---------------------------------------------------------------------------------------

def test_lsmdc_reads_every_line_without_a_header(tmp_path):
    items = load_lsmdc(write_lsmdc(tmp_path / "LSMDC16_challenge_1000_publictect.csv"))
    assert len(items) == 3  # the first line is data (pandas with header=0 would keep 2)
    assert items[0].video_id == "1006_Slumdog_Millionaire_01.25.49.077-01.25.54.718"
    assert items[0].captions == ["SOMEONE runs across the rooftop."]
    assert items[0].path == "1006_Slumdog_Millionaire/1006_Slumdog_Millionaire_01.25.49.077-01.25.54.718.avi"
    assert lsmdc_movie(items[2].video_id) == "0001_American_Beauty"
    assert detect_dataset(tmp_path / "LSMDC16_challenge_1000_publictect.csv") == "lsmdc"


def test_lsmdc_malformed_rows_report_line_numbers(tmp_path):
    rows = [*LSMDC_ROWS[:2], LSMDC_ROWS[2][:5]]
    with pytest.raises(AnnotationError, match="line 3: expected 6 tab-separated fields"):
        load_lsmdc(write_lsmdc(tmp_path / "a.csv", rows))
    header = ("clip_id", "start_aligned", "end_aligned", "start_extracted", "end_extracted", "sentence")
    with pytest.raises(AnnotationError, match="line 1: .*no header row"):
        load_lsmdc(write_lsmdc(tmp_path / "b.csv", [header, *LSMDC_ROWS]))
    with pytest.raises(AnnotationError, match="line 2: empty caption"):
        load_lsmdc(write_lsmdc(tmp_path / "c.csv", [LSMDC_ROWS[0], (*LSMDC_ROWS[1][:5], "  ")]))
    with pytest.raises(AnnotationError, match="duplicate video id.*1006_Slumdog_Millionaire_01.25.49.077"):
        load_lsmdc(write_lsmdc(tmp_path / "d.csv", [*LSMDC_ROWS, LSMDC_ROWS[0]]))


# --- malformed files -----------------------------------------------------------------------------

def test_malformed_msrvtt_csv(tmp_path):
    header = "key,vid_key,video_id,sentence\n"
    bad = tmp_path / "bad.csv"
    bad.write_text(header + "ret0,msr1,video1,a cat\nret1,msr2,video2,a dog,extra\n")
    with pytest.raises(AnnotationError, match="line 3: expected 4 fields"):
        load_msrvtt(bad)
    bad.write_text(header + "ret0,msr1,video1,a cat\nret1,msr2,video2,\n")
    with pytest.raises(AnnotationError, match="line 3: empty caption for video2"):
        load_msrvtt(bad)
    bad.write_text(header + "ret0,msr1,video1,a cat\nret1,msr1,video1,a dog\n")
    with pytest.raises(AnnotationError, match="duplicate video id.*video1"):
        load_msrvtt(bad)
    ok = tmp_path / "ok.csv"
    ok.write_text(header + 'ret0,msr1,video1,"a cat, sitting"\r\n\r\n')  # quoted comma, CRLF, blank line
    assert load_msrvtt(ok) == [VideoText("video1", ["a cat, sitting"])]


def test_malformed_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"video": "a.mp4", "caption": "x"},\n {"video": "b.mp4" "caption": "y"}]')
    with pytest.raises(AnnotationError, match="invalid JSON at line 2"):
        load_generic(bad)
    bad.write_text(json.dumps([{"video": "a.mp4", "caption": "x"}, {"video": "b.mp4"}]))
    with pytest.raises(AnnotationError, match="record"):
        load_generic(bad)
    bad.write_text(json.dumps([{"video": "a.mp4", "caption": "x"}, {"video": "b.mp4", "caption": ["ok", " "]}]))
    with pytest.raises(AnnotationError, match=r"record 1 \(b.mp4\): empty caption"):
        load_generic(bad)
    bad.write_text('{"v_a": {"sentences": ["x"]}, "v_a": {"sentences": ["y"]}}')
    with pytest.raises(AnnotationError, match="duplicate key 'v_a'"):
        load_activitynet(bad)
    bad.write_text(json.dumps({"v_a": {"sentences": [" ", ""]}}))
    with pytest.raises(AnnotationError, match="v_a: empty caption"):
        load_activitynet(bad)
    bad.write_text("[]")
    with pytest.raises(AnnotationError, match="empty"):
        load_annotations(bad)


def test_non_utf8_bytes_name_offset_and_line(tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(b"key,vid_key,video_id,sentence\nret0,msr1,video1,a caf\xe9 scene\n")
    with pytest.raises(AnnotationError, match=r"not valid UTF-8: byte 0xe9 at offset 52 \(line 2, column 23\)") as err:
        load_msrvtt(bad)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_file_and_split_lists(tmp_path):
    with pytest.raises(AnnotationError, match="no such file"):
        load_annotations(tmp_path / "nope.json")
    split = tmp_path / "MSRVTT_train.9k.csv"
    split.write_text("video_id\nvideo0\nvideo1\n")
    with pytest.raises(AnnotationError, match="no captions"):
        load_annotations(split)
    with pytest.raises(AnnotationError, match="unknown dataset"):
        load_annotations(MSRVTT_CSV, "kinetics")


def test_generic_list_several_captions_are_several_queries(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"video": "clips/a.mp4", "caption": ["one", "two"]},
                                {"video": "b.webm", "caption": "three"},
                                {"video": "clips/a.mp4", "caption": "four"}]))  # repeats allowed here
    items = load_generic(path)
    assert [(x.video_id, x.captions, x.path) for x in items] == [
        ("clips/a", ["one", "two"], "clips/a.mp4"), ("b", ["three"], "b.webm"), ("clips/a", ["four"], "clips/a.mp4")]
    assert load_annotations(path) == items


# --- files ---------------------------------------------------------------------------------------

def test_find_video_file_by_id(tmp_path):
    for name in ["video9770.mp4", "video9771.webm", "uqiMw7tQ1Cc.mkv", "v_bXdq2zI1Ms0.mp4", "CAPS.MP4",
                 "1006_Slumdog_Millionaire/1006_Slumdog_Millionaire_01.25.49.077-01.25.54.718.avi",
                 "flat_clip_00.00.01.000-00.00.02.000.avi", "img.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")  # names only; nothing is decoded here
    assert find_video_file(tmp_path, "video9770", "msrvtt") == tmp_path / "video9770.mp4"
    assert find_video_file(tmp_path, "video9771", "msrvtt") == tmp_path / "video9771.webm"
    assert find_video_file(tmp_path, "v_uqiMw7tQ1Cc", "activitynet") == tmp_path / "uqiMw7tQ1Cc.mkv"
    assert find_video_file(tmp_path, "v_bXdq2zI1Ms0", "activitynet") == tmp_path / "v_bXdq2zI1Ms0.mp4"
    assert find_video_file(tmp_path, "bXdq2zI1Ms0", "activitynet") == tmp_path / "v_bXdq2zI1Ms0.mp4"
    clip = "1006_Slumdog_Millionaire_01.25.49.077-01.25.54.718"
    assert find_video_file(tmp_path, clip, "lsmdc") == tmp_path / "1006_Slumdog_Millionaire" / f"{clip}.avi"
    assert find_video_file(tmp_path, "flat_clip_00.00.01.000-00.00.02.000", "lsmdc").name.endswith(".avi")
    assert find_video_file(tmp_path, "CAPS") == tmp_path / "CAPS.MP4"
    assert find_video_file(tmp_path, "img") == tmp_path / "img.jpg"
    assert find_video_file(tmp_path, "video9770.mp4") == tmp_path / "video9770.mp4"
    assert find_video_file(tmp_path, "v_uqiMw7tQ1Cc", "msrvtt") is None  # prefix handling is ActivityNet's
    assert find_video_file(tmp_path, "video1", "msrvtt") is None


def test_load_folder_pairs_media_with_caption_files(tmp_path):
    for name in ["a.mp4", "b.gif", "sub/c.webm", "d.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a.txt").write_text("a red ball\n\n  rolls left  \n")
    (tmp_path / "sub" / "c.txt").write_text("a cat\n")
    (tmp_path / "d.txt").write_text("a still image\n")
    items = load_folder(tmp_path)
    assert [(x.video_id, x.captions) for x in items] == [
        ("a", ["a red ball", "rolls left"]), ("d", ["a still image"]), ("sub/c", ["a cat"])]
    assert Path(items[0].path) == (tmp_path / "a.mp4").resolve()
    assert [x.video_id for x in load_folder(tmp_path, require_captions=False)] == ["a", "b", "d", "sub/c"]


# --- one parser for every reader -----------------------------------------------------------------

def _msrvtt_data(folder: Path) -> Path:
    data = {"videos": [{"video_id": "video2", "split": "train"}, {"video_id": "video1", "split": "train"}],
            "sentences": [{"video_id": "video2", "caption": "b", "sen_id": 0},
                          {"video_id": "video1", "caption": "a", "sen_id": 1},
                          {"video_id": "video2", "caption": "c", "sen_id": 2}]}
    (folder / "MSRVTT_data.json").write_text(json.dumps(data))
    return folder / "MSRVTT_data.json"


def test_msrvtt_data_json_is_read_by_the_eval_loader(tmp_path):
    """It was understood by the shard writer only; now one entry per video with all its captions."""
    data = _msrvtt_data(tmp_path)
    items = load_msrvtt(data)
    assert [(x.video_id, x.captions, x.path) for x in items] == [("video2", ["b", "c"], "video2.mp4"),
                                                                 ("video1", ["a"], "video1.mp4")]
    assert detect_dataset(data) == "msrvtt" and load_annotations(data) == items
    with pytest.raises(AnnotationError, match="looks like MSRVTT_data.json.*not an annotation file"):
        load_activitynet(data)
    split = tmp_path / "MSRVTT_train.9k.csv"  # ids only: the captions come from MSRVTT_data.json beside it
    split.write_text("video_id\nvideo1\nvideo2\n")
    assert [(x.video_id, x.captions) for x in load_msrvtt(split)] == [("video1", ["a"]), ("video2", ["b", "c"])]
    split.write_text("video_id\nvideo1\nvideo7\n")
    with pytest.raises(AnnotationError, match="line 3: video7 has no caption in .*MSRVTT_data.json"):
        load_msrvtt(split)
    data.write_text(json.dumps({"videos": [], "sentences": [{"video_id": "video1", "caption": " "}]}))
    with pytest.raises(AnnotationError, match="sentence 0: empty caption"):
        load_msrvtt(data)


def test_shards_tokenizer_and_eval_read_each_file_the_same_way(tmp_path):
    """Training reads (`strict=False`) give the same entries as eval's loader, merged by file; they only differ
    where eval refuses: an entry without a caption is kept (the shard writer then skips it with the reason)."""
    from pretrain.shards import read_annotations
    from retrieval.data.annotations import read_annotation_file
    from retrieval.tokenizer import read_caption_file

    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"video": "a.mp4", "caption": ["one", " two "], "duration": 3},
                                  {"image": "b.webp", "caption": "three"}, {"video": "a.mp4", "caption": "four"}]))
    for path in (MSRVTT_CSV, MSRVTT_JSON, _msrvtt_data(tmp_path), listed):
        entries = load_annotations(path, "generic" if path == listed else "auto")
        merged = {}
        for e in entries:
            merged.setdefault(e.path, []).extend(c.strip() for c in e.captions)
        assert [(i.name, i.captions) for i in read_annotations(path, tmp_path)] == list(merged.items()), path
        if path.suffix == ".json":
            assert read_caption_file(path) == [c.strip() for e in entries for c in e.captions]
    assert read_annotations(listed, tmp_path)[0].meta == {"duration": 3}
    assert [e.video_id for e in load_generic(listed)] == ["a", "b", "a"]  # .webp is a media extension
    gaps = tmp_path / "gaps.json"
    gaps.write_text(json.dumps([{"video": "a.mp4", "caption": ["", "ok"]}, {"video": "b.mp4"}]))
    assert [(e.path, e.captions) for e in read_annotation_file(gaps, strict=False)] == [("a.mp4", ["ok"]),
                                                                                          ("b.mp4", [])]
    with pytest.raises(AnnotationError, match=r"record 0 \(a.mp4\): empty caption"):
        load_generic(gaps)


def test_webp_is_found_by_id_like_the_other_media(tmp_path):
    (tmp_path / "still.webp").write_bytes(b"")
    (tmp_path / "still.txt").write_text("a still image\n")
    assert find_video_file(tmp_path, "still") == tmp_path / "still.webp"
    assert [x.video_id for x in load_folder(tmp_path)] == ["still"]
