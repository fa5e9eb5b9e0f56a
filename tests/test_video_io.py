"""Video probing/decoding/sampling on tiny generated clips (frame index encoded as colour) and the frame transforms."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from helpers_media import color_index, write_test_audio, write_test_image, write_test_video  # noqa: E402

from retrieval.data.transforms import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    frames_to_tensor,
    frames_to_uint8,
    normalize_clips,
    random_resized_crop_flip,
)
from retrieval.data.video import VideoError, probe, read_frames, read_frames_bytes, sample_indices  # noqa: E402


def indices_of(frames: np.ndarray) -> list[int]:
    return [color_index(f) for f in frames]


# --- sample_indices ----------------------------------------------------------------------------

def test_middle_indices_match_the_vindlu_formula():
    # segments of 8 frames [0,8), [8,16), ...: middle (lo + hi - 1) // 2
    assert sample_indices(64, 8) == [3, 11, 19, 27, 35, 43, 51, 59]
    assert sample_indices(24, 8) == [1, 4, 7, 10, 13, 16, 19, 22]
    assert sample_indices(10, 1) == [4]


def test_indices_in_a_range_and_short_ranges_repeat_in_order():
    assert sample_indices(100, 4, start=20, end=28) == [20, 22, 24, 26]
    assert sample_indices(3, 8) == [0, 0, 0, 1, 1, 1, 2, 2]
    assert sample_indices(1, 4) == [0, 0, 0, 0]
    assert sample_indices(50, 2, start=40, end=40) == [40, 40]  # empty range -> the frame at its start
    assert sample_indices(10, 2, start=5, end=99) == [5, 8]  # end clipped: [5,7) -> 5, [7,10) -> 8


def test_rand_indices_are_reproducible_and_stay_in_their_segment():
    a = sample_indices(64, 8, "rand", rng=np.random.default_rng(3))
    b = sample_indices(64, 8, "rand", rng=np.random.default_rng(3))
    assert a == b
    assert all(8 * i <= x < 8 * (i + 1) for i, x in enumerate(a))
    assert sample_indices(64, 8, "rand", rng=7) == sample_indices(64, 8, "rand", rng=7)


def test_bad_sampling_arguments():
    with pytest.raises(ValueError):
        sample_indices(0, 8)
    with pytest.raises(ValueError):
        sample_indices(10, 0)
    with pytest.raises(ValueError):
        sample_indices(10, 2, start=10)
    with pytest.raises(ValueError):
        sample_indices(10, 2, mode="uniform")


# --- decoding ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif"])
def test_read_middle_frames_in_every_container(tmp_path, ext):
    path = write_test_video(tmp_path / f"clip{ext}", num_frames=24, size=(64, 48), fps=8)
    info = probe(path)
    assert (info.num_frames, info.width, info.height) == (24, 64, 48)
    assert info.duration == pytest.approx(3.0, abs=0.02) and info.fps == pytest.approx(8, abs=0.1)
    frames = read_frames(path, 8)
    assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
    assert indices_of(frames) == sample_indices(24, 8) == [1, 4, 7, 10, 13, 16, 19, 22]
    # a segment [1 s, 2 s) at 8 fps is frames 8..15
    assert indices_of(read_frames(path, 4, start_sec=1.0, end_sec=2.0)) == [8, 10, 12, 14]


def test_stream_without_timestamps_frame_count_or_seeking(tmp_path):
    # a raw H.264 elementary stream: frames are counted by demuxing and picked by counting
    path = write_test_video(tmp_path / "raw.h264", num_frames=20, fps=8)
    assert probe(path).num_frames == 20
    assert indices_of(read_frames(path, 5)) == indices_of(read_frames_bytes(path.read_bytes(), 5)) == [1, 5, 9, 13, 17]


def test_short_clip_repeats_frames(tmp_path):
    path = write_test_video(tmp_path / "short.mp4", num_frames=3, fps=8)
    assert indices_of(read_frames(path, 8)) == [0, 0, 0, 1, 1, 1, 2, 2]


def test_rand_mode_is_reproducible(tmp_path):
    path = write_test_video(tmp_path / "r.mp4", num_frames=32, fps=8)
    a = indices_of(read_frames(path, 4, mode="rand", rng=np.random.default_rng(0)))
    b = indices_of(read_frames(path, 4, mode="rand", rng=np.random.default_rng(0)))
    assert a == b == sample_indices(32, 4, "rand", rng=np.random.default_rng(0))


def test_segment_of_a_long_clip_seeks_to_the_right_frames(tmp_path):
    path = write_test_video(tmp_path / "long.mp4", num_frames=300, size=(32, 32), fps=30, gop=15)
    got = read_frames(path, 4, start_sec=7.0, end_sec=8.0)
    assert indices_of(got) == sample_indices(300, 4, start=210, end=240) == [213, 220, 228, 235]
    assert indices_of(read_frames(path, 8)) == sample_indices(300, 8)


def test_variable_frame_rate_samples_by_presentation_time(tmp_path):
    # 8 frames shown at 0, .1, .15, .4, 1.0, 1.1, 1.2, 2.0 s; mkv duration 2.1 s at a nominal 10 fps
    # -> a 21-step time grid; middle of 8 segments = steps 0 3 5 8 11 13 16 19 = 0 .3 .5 .8 1.1 1.3
    # 1.6 1.9 s, and the frame on screen at each time (half-step tolerance) is:
    pts = [0, 100, 150, 400, 1000, 1100, 1200, 2000]
    path = write_test_video(tmp_path / "vfr.mkv", num_frames=8, fps=10, pts=pts)
    assert indices_of(read_frames(path, 8)) == [0, 2, 3, 3, 5, 6, 6, 6]


def test_bytes_and_file_give_the_same_frames(tmp_path):
    path = write_test_video(tmp_path / "b.webm", num_frames=16)
    np.testing.assert_array_equal(read_frames_bytes(path.read_bytes(), 4), read_frames(path, 4))


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_image_is_a_one_frame_video(tmp_path, ext):
    path = write_test_image(tmp_path / f"img{ext}", color=(200, 100, 50), size=(40, 30))
    info = probe(path)
    assert (info.num_frames, info.width, info.height) == (1, 40, 30)
    frames = read_frames(path, 4)
    assert frames.shape == (4, 30, 40, 3)
    assert np.abs(frames.reshape(-1, 3).mean(0) - [200, 100, 50]).max() < 4
    np.testing.assert_array_equal(frames[0], frames[3])
    np.testing.assert_array_equal(read_frames_bytes(path.read_bytes(), 2)[0], frames[0])


def test_unusable_files_raise_video_error_with_a_reason(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video " * 50)
    audio = write_test_audio(tmp_path / "tone.m4a")
    cases = {empty: "cannot open", junk: "cannot open", tmp_path / "missing.mp4": "cannot open",
             audio: "no video stream"}
    for path, reason in cases.items():
        with pytest.raises(VideoError) as err:
            read_frames(path, 4)
        assert err.value.reason.startswith(reason), err.value.reason
        with pytest.raises(VideoError):
            probe(path)
    with pytest.raises(VideoError, match="cannot open"):
        read_frames_bytes(b"", 4)


def test_segment_after_the_end_is_an_error(tmp_path):
    path = write_test_video(tmp_path / "s.mp4", num_frames=16, fps=8)
    with pytest.raises(VideoError, match="after the end"):
        read_frames(path, 4, start_sec=5.0, end_sec=6.0)


def test_truncated_files_return_what_decodes_or_fail_with_a_reason(tmp_path):
    path = write_test_video(tmp_path / "t.webm", num_frames=40, fps=10)
    data = path.read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: int(len(data) * 0.3)])
    got = indices_of(read_frames(cut, 8))  # metadata says 40 frames; only the first ones decode
    assert got == sorted(got) and max(got) < 20 and len(got) == 8
    cut.write_bytes(data[:300])
    with pytest.raises(VideoError):
        read_frames(cut, 8)


def test_x264_is_capped_at_avx2_only_where_it_would_use_avx512(tmp_path, monkeypatch):
    from retrieval.data import video

    def has(flags):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        return video._has_x264_avx512(str(tmp_path / "cpuinfo"))

    full = "sse2 avx2 fma bmi2 avx512f avx512cd avx512bw avx512dq avx512vl"
    assert has(full)
    assert not has(full.replace(" avx512vl", ""))  # x264 wants all five
    assert not has("sse2 avx2 fma bmi2")
    assert not video._has_x264_avx512(str(tmp_path / "missing"))  # no /proc (macOS, Windows): x264 as it is
    for avx512, options in ((True, {"x264-params": "asm=AVX2"}), (False, {})):
        monkeypatch.setattr(video, "_has_x264_avx512", lambda: avx512)
        video.x264_options.cache_clear()
        assert video.x264_options() == options
    video.x264_options.cache_clear()


def test_import_does_not_load_pyav():
    code = ("import sys, retrieval.data.video, retrieval.data.transforms, retrieval.data.annotations, "
            "retrieval.metrics; sys.exit('av' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- transforms ----------------------------------------------------------------------------------

def test_frames_to_tensor_normalises_and_centre_crops():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 20:60] = (255, 128, 0)  # centre square (x 20..60) is orange, the sides black
    x = frames_to_tensor(frames, 16)
    assert x.shape == (3, 2, 16, 16) and x.dtype == torch.float32
    expected = (torch.tensor([255, 128, 0]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x.mean(dim=(1, 2, 3)), expected.float(), atol=1e-2, rtol=0)
    squashed = frames_to_tensor(frames, 16, crop=False)  # whole frame: black sides come in
    assert squashed[0, :, :, 0].mean() < x[0, :, :, 0].mean()
    assert frames_to_tensor(frames[0], 8).shape == (3, 1, 8, 8)  # one image
    with pytest.raises(TypeError):
        frames_to_tensor(frames.astype(np.float32), 8)


def test_uint8_frames_normalised_later_match_frames_to_tensor_exactly():
    """The index ships uint8 clips from its workers and normalises on the model's device: same numbers."""
    rng = np.random.default_rng(7)
    clips = [rng.integers(0, 256, (3, 30, 50, 3), dtype=np.uint8) for _ in range(2)]
    small = torch.stack([frames_to_uint8(c, 16) for c in clips])
    assert small.dtype == torch.uint8 and small.shape == (2, 3, 3, 16, 16)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    want = torch.stack([frames_to_tensor(c, 16, mean, std) for c in clips])
    assert torch.equal(normalize_clips(small, mean, std), want)


def test_random_resized_crop_flip_is_shared_by_all_frames_and_reproducible():
    base = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    frames = np.stack([base, base, base])
    out = random_resized_crop_flip(frames, 16, generator=torch.Generator().manual_seed(1))
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], out[2])  # same crop for every frame
    again = random_resized_crop_flip(frames, 16, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(out, again)
    x = frames_to_tensor(frames, 24)  # (3, T, 24, 24) float
    y = random_resized_crop_flip(x, 12, generator=torch.Generator().manual_seed(2))
    assert y.shape == (3, 3, 12, 12) and y.dtype == torch.float32
    torch.testing.assert_close(y[:, 0], y[:, 1])
