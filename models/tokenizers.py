"""CLIP tokenizers built offline: from a local directory, a CLIP BPE file, or the tiny vocabulary.

In transformers 5, ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently gives a 3-token
vocabulary, so every path here reads the files itself and passes ``vocab=`` and ``merges=``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from dedgeai.models.errors import WeightsError

MAX_TOKENS = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# SD3 pads CLIP-L with the end token and CLIP-G with "!" (as its tokenizer_2 config says).
DEFAULT_PAD = {"tokenizer": EOS, "tokenizer_2": "!"}
# CLIP's BPE file holds 49152 - 256 - 2 usable merges after its header line.
CLIP_MERGES = 49152 - 256 - 2
OPEN_CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"

Merges = list[tuple[str, str]]


def make_tokenizer(vocab: dict[str, int], merges: Merges, pad_token: str) -> CLIPTokenizer:
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=MAX_TOKENS,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=pad_token,
    )


def tiny_vocabulary() -> tuple[dict[str, int], Merges]:
    """Byte-level symbols, their word-final forms and the two specials (end token last)."""
    chars = list(bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, []


def tiny_tokenizer(name: str = "tokenizer") -> CLIPTokenizer:
    vocab, merges = tiny_vocabulary()
    return make_tokenizer(vocab, merges, DEFAULT_PAD[name])


def vocabulary_from_bpe(path: Path) -> tuple[dict[str, int], Merges]:
    """CLIP's vocabulary rebuilt from its BPE merges file, as CLIP's own tokenizer does."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except OSError as exc:
        raise WeightsError(f"cannot read the CLIP BPE file {path}: {exc}") from exc
    body = [line for line in lines[1:] if line.strip()][:CLIP_MERGES]
    merges: Merges = [tuple(line.split()) for line in body]  # type: ignore[misc]
    chars = list(bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges), BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def find_packaged_bpe() -> Path | None:
    """The CLIP BPE file shipped by open_clip, if that package is installed (not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / OPEN_CLIP_BPE
        if candidate.is_file():
            return candidate
    return None


def _read_pad(folder: Path, default: str) -> str:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            pad = json.loads(path.read_text()).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if isinstance(pad, str):
                return pad
    return default


def tokenizer_files_missing(folder: Path) -> list[Path]:
    """What a tokenizer folder lacks: vocab.json + merges.txt, or tokenizer.json."""
    if (folder / "tokenizer.json").is_file():
        return []
    return [p for p in (folder / "vocab.json", folder / "merges.txt") if not p.is_file()]


def tokenizer_from_folder(folder: Path, name: str) -> CLIPTokenizer:
    """Read a tokenizer from local files only; never touches the network."""
    pad = _read_pad(folder, DEFAULT_PAD[name])
    try:
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            merges: Merges = [
                tuple(line.split())  # type: ignore[misc]
                for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
                if line and not line.startswith("#version")
            ]
            return make_tokenizer(vocab, merges, pad)
        if (folder / "tokenizer.json").is_file():
            return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, pad_token=pad)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read the tokenizer in {folder}: {exc}") from exc
    missing = ", ".join(str(p) for p in tokenizer_files_missing(folder))
    raise WeightsError(f"tokenizer files missing: {missing}")


def save_tokenizer(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """Write vocab.json, merges.txt and the special tokens, as SD3's diffusers folders hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (folder / "vocab.json").write_text(
        json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8"
    )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{m}\n" for m in merges), encoding="utf-8"
    )
    specials = {
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": tokenizer.pad_token,
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
