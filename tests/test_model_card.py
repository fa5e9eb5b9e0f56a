"""Model cards: written by save_model and write_card, loaded with the model; card-less folders still load and search."""
from __future__ import annotations

import shutil

import pytest
import yaml

import retrieval
from retrieval.model import CardResult, ModelCard, read_card, write_card

TINY = {
    "video": {"name": "videomamba_tiny", "encoder": {"embed_dim": 32, "depth": 2, "img_size": 32, "num_frames": 4}},
    "text": {"kind": "clip", "width": 32, "layers": 1, "heads": 2, "context_length": 32},
    "embed_dim": 16,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    card = ModelCard(domain="real", summary="people and pets", data="my clips", clips=12, steps=3,
                     results=[CardResult("my test, R@1", "50.0%", "vmr eval ...")], examples=["a dog"])
    return retrieval.save_model(retrieval.create_model(TINY).eval(), tmp_path_factory.mktemp("m") / "model", card=card)


def test_save_model_writes_the_card_and_load_model_reads_it(saved):
    card = retrieval.load_model(saved).card
    assert (card.domain, card.clips, card.steps, card.examples) == ("real", 12, 3, ["a dog"])
    assert card.input == "4 frames at 32 px per segment"  # filled in from the config
    assert card.text_tower == "CLIP-style text transformer (1 layers x 32) trained from scratch"
    assert card.results[0].command == "vmr eval ..."


def test_blank_card_by_default_and_a_folder_without_card_loads(saved, tmp_path):
    plain = retrieval.save_model(retrieval.create_model(TINY).eval(), tmp_path / "plain")
    assert retrieval.load_model(plain).card.domain == "unknown"
    old = tmp_path / "old"  # as saved before cards existed: no `card` section
    shutil.copytree(saved, old)
    data = yaml.safe_load((old / "config.yaml").read_text())
    del data["card"]
    (old / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    model = retrieval.load_model(old)
    assert model.card is None and model.model_id == retrieval.load_model(saved).model_id


def test_write_card_keeps_the_weights_and_model_id(saved, tmp_path):
    folder = shutil.copytree(saved, tmp_path / "copy")
    before = retrieval.load_model(folder).model_id
    weights = (folder / "model.safetensors").read_bytes()
    write_card(folder, ModelCard(domain="synthetic", summary="shapes"))
    assert (folder / "model.safetensors").read_bytes() == weights
    model = retrieval.load_model(folder)
    assert model.model_id == before and model.card.summary == "shapes"
    assert not list(folder.glob("*.tmp"))


def test_a_malformed_card_is_refused_with_the_file_named(saved, tmp_path):
    folder = shutil.copytree(saved, tmp_path / "bad")
    data = yaml.safe_load((folder / "config.yaml").read_text())
    data["card"]["domain"] = "space"
    (folder / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="config.yaml.*card.domain must be one of"):
        read_card(folder)
    data["card"] = {"colour": "red"}
    (folder / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="config.yaml: card: unknown key"):
        read_card(folder)


def test_the_demo_model_card():
    from app.demo import DEFAULT_MODEL
    from retrieval.io import sha256_file

    card = read_card(DEFAULT_MODEL)
    assert card.domain == "synthetic" and card.clips == 30000 and card.steps == 2340
    assert card.input == "8 frames at 64 px per segment" and "MiniLM" in card.text_tower
    assert {"colours", "shapes", "motions", "backgrounds"} <= set(card.vocabulary)
    assert any("92.9%" in r.value and "vmr eval" in r.command for r in card.results)
    assert len(card.examples) >= 6 and card.scores
    # the card sits in config.yaml only: the weights are unchanged, and so is the model id demo indexes record
    # (config + weights, test_demo_model.py pins it)
    assert sha256_file(DEFAULT_MODEL / "model.safetensors")[:16] == "5c53c951353c1f2f"


def test_training_card_of_the_demo_recipe():
    from pretrain.card import training_card
    from pretrain.config import load_train_config
    from pretrain.synth import TEMPLATE_VOCAB, content_words

    cfg = load_train_config("configs/pretrain/demo_minilm.yaml")
    card = training_card(cfg, 2340, {"t2v_r1": 92.9, "t2v_r5": 100.0, "videos": 1000.0})
    assert card.domain == "synthetic" and card.clips == 30000 and "global batch 256" in card.data
    assert card.results[0].value == "92.9% / 100.0%"
    assert card.results[0].command == "python pretrain/run.py --config runs/demo_minilm/config.yaml"
    for example in card.examples:  # worded in the vocabulary the model was trained on
        assert content_words(example) <= TEMPLATE_VOCAB, example
