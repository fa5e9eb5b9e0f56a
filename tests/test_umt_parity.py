"""Parity with the release's own code: its UMT_VIDEOMAMBA outputs (fixture from scripts/make_umt_parity_fixture.py)
against ours on a checkpoint in its exact layout: keys, embeddings, similarity, ITM logits, re-ranked matrices."""
import numpy as np
import pytest
import torch
from umt_reference import FIXTURE, load_spec, release_inputs, release_weights

from retrieval import load_retrieval_model
from retrieval.umt import clean_caption, itm_rerank

pytest.importorskip("safetensors")
RTOL = 1e-5


def _close(ours, theirs, what):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
    err = np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12)
    print(f"{what}: max relative difference {err:.1e}")
    assert err <= RTOL, f"{what}: max relative difference {err:.2e} > {RTOL:g}"


@pytest.fixture(scope="module")
def release():
    spec = load_spec()
    expected = dict(np.load(FIXTURE / "expected.npz"))
    return spec, expected


@pytest.fixture(scope="module")
def loaded(release, tmp_path_factory):
    spec, _ = release
    path = tmp_path_factory.mktemp("umt") / "videomamba_m16_small.pth"
    torch.save({"model": release_weights(spec["keys"])}, path)
    return load_retrieval_model(path, context_length=spec["max_txt_l"]).eval()


def _to_release_name(key: str) -> str:
    if key.startswith("visual."):
        key = "vision_encoder." + key[len("visual."):]
        return key.replace("vision_encoder.norm_f.", "vision_encoder.norm.")
    if key.startswith("text."):
        return "text_encoder.bert." + key[len("text."):]
    return key


def test_same_keys_and_shapes_every_unused_key_reported(release, loaded):
    spec, _ = release
    theirs = {s["key"]: tuple(s["shape"]) for s in spec["keys"]}
    ours = {_to_release_name(k): tuple(v.shape) for k, v in loaded.state_dict().items()}
    unused = set(theirs) - set(ours)
    assert unused == {k for k in theirs if k.startswith(("text_encoder.cls.", "vision_encoder.clip_decoder."))} | {
        "text_encoder.bert.embeddings.position_ids"}
    assert {k: theirs[k] for k in ours} == ours
    rep = loaded.load_report
    assert sorted(rep.ignored) == sorted(unused) and not rep.missing and not rep.unexpected
    assert loaded.config.text.fusion_layer == spec["bert"]["fusion_layer"]
    assert loaded.config.text.num_heads == spec["bert"]["num_attention_heads"]


def test_caption_cleaning_and_tokens_match(release, loaded):
    spec, expected = release
    assert [clean_caption(c) for c in spec["captions"]] == list(expected["cleaned"])
    assert torch.equal(loaded.tokenize(spec["captions"]), torch.from_numpy(expected["input_ids"]))


@pytest.fixture(scope="module")
def ours(release, loaded):
    spec, _ = release
    videos = release_inputs(spec)
    with torch.no_grad():
        video_emb, tokens = loaded.video_features(videos)
        states, mask = loaded.text_states(spec["captions"])
        text_emb = loaded.embed_text_states(states)
    return {"video_emb": video_emb, "tokens": tokens, "states": states, "mask": mask, "text_emb": text_emb,
            "sim": text_emb @ video_emb.T}


def test_embeddings_and_similarity(release, loaded, ours):
    spec, expected = release
    _close(ours["video_emb"], expected["video_emb"], "video embeddings")
    _close(ours["text_emb"], expected["text_emb"], "text embeddings")
    _close(ours["sim"], expected["sim_t2v"], "similarity (texts x videos)")
    _close(ours["sim"].T, expected["sim_v2t"], "similarity (videos x texts)")
    with torch.no_grad():  # the public encoders give the same numbers as the split calls
        _close(loaded.encode_video(release_inputs(spec)), expected["video_emb"], "encode_video")
        _close(loaded.encode_text(spec["captions"]), expected["text_emb"], "encode_text")


def test_match_logits(release, loaded, ours):
    _, expected = release
    n_text, n_video = expected["itm"].shape
    with torch.no_grad():
        per_video = [loaded.itm_scores(ours["states"], ours["mask"], ours["tokens"][v:v + 1].expand(n_text, -1, -1))
                     for v in range(n_video)]
        itm = torch.stack(per_video, 1)
    _close(itm, expected["itm"], "ITM logits")


def test_reranked_matrices_with_fill(release, loaded, ours):
    spec, expected = release
    k = spec["k_test"]
    assert k < len(expected["sim_t2v"][0])  # some entries must be -100
    calls = []
    t2v = itm_rerank(loaded, ours["sim"], ours["states"], ours["mask"], ours["tokens"], k, "t2v", batch_size=2,
                     progress=calls.append)
    v2t = itm_rerank(loaded, ours["sim"], ours["states"], ours["mask"], ours["tokens"], k, "v2t", batch_size=3)
    assert len(calls) == len(spec["captions"])
    for mine, theirs, what in ((t2v, expected["rerank_t2v"], "t2v"), (v2t, expected["rerank_v2t"], "v2t")):
        assert np.array_equal(mine.numpy() == -100.0, theirs == -100.0), f"{what}: different top-{k} sets"
        assert (theirs == -100.0).sum(1).tolist() == [theirs.shape[1] - k] * theirs.shape[0]
        _close(mine, theirs, f"re-ranked {what} matrix")
