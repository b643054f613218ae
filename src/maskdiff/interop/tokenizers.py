"""The tokenizer of an imported model, as maskdiff's ``bpe`` tokenizer in maskdiff's id space.

Sources: a Hugging Face ``tokenizer.json`` (a file, or a folder holding one), or the tokenizer
that a GGUF file carries (converted by ``transformers``, the ``judge`` extra). When the source's
mask token sits below the end of its vocabulary, its id and the last token's id trade places
(:class:`maskdiff.interop.layout.Vocab` does the same to the weights' rows) and the mask token
leaves the tokenizer: maskdiff's mask id is always V, one past the last token.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from maskdiff.bpe import BPETokenizer, find_eot
from maskdiff.errors import MaskdiffError


def read_tokenizer_json(path: Path) -> dict:
    """The tokenizers JSON of ``path`` (a tokenizer.json file or a folder holding one)."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        where = f"{path} holds no tokenizer.json" if path.is_dir() else f"tokenizer {path} does not exist"
        raise MaskdiffError(
            f"{where}; pass the model's tokenizer with --tokenizer (a tokenizer.json or a folder holding one; a model that ships "
            "vocab.json and merges.txt instead can write one with transformers: AutoTokenizer.from_pretrained(DIR, "
            "trust_remote_code=True).save_pretrained(OUT))"
        )
    if file.name.endswith(".model"):
        raise MaskdiffError(f"{file} is a sentencepiece model; pass the tokenizer.json of the same tokenizer instead")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        Tokenizer.from_str(json.dumps(raw))
    except Exception as err:  # JSON and the tokenizers library's own parse errors
        raise MaskdiffError(f"{file} is not a tokenizers JSON file: {' '.join(str(err).split())[:200]}") from None
    return raw


def vocabulary_size(raw: dict) -> int:
    """How many ids the tokenizer uses (one past its largest id)."""
    return Tokenizer.from_str(json.dumps(raw)).get_vocab_size(with_added_tokens=True)


def without_mask(raw: dict, mask_id: int) -> tuple[dict, int]:
    """The tokenizer JSON in maskdiff's ids: the mask token (id ``mask_id``) removed and, when it is
    not the last token, the last token moved to its id.  -> (JSON, V)"""
    size = vocabulary_size(raw)
    if mask_id >= size:  # the mask is not a token of this tokenizer (SMDM's id 32000)
        return raw, size
    last = size - 1
    raw = json.loads(json.dumps(raw))  # a copy
    trade = {mask_id: last, last: mask_id}
    vocab = raw.get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        raw["model"]["vocab"] = {tok: trade.get(i, i) for tok, i in vocab.items() if i != mask_id}
    elif vocab is not None:
        raise MaskdiffError("only BPE and WordPiece tokenizers (a token -> id vocabulary) can move their mask token")
    raw["added_tokens"] = [dict(t, id=trade.get(t["id"], t["id"])) for t in raw.get("added_tokens", []) if t["id"] != mask_id]
    return raw, last


def bpe_tokenizer(raw: dict, name: str, eot: str | None = None) -> BPETokenizer:
    """maskdiff's tokenizer from a tokenizers JSON (its end of text: ``eot`` or the usual names)."""
    tokenizer = Tokenizer.from_str(json.dumps(raw))
    return BPETokenizer(tokenizer, name, find_eot(tokenizer, name, eot))


def gguf_tokenizer_json(path: Path) -> dict:
    """The tokenizer a GGUF file carries, as tokenizers JSON (converted by ``transformers``)."""
    from maskdiff.errors import install_hint

    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise MaskdiffError(f"reading a GGUF file's tokenizer needs transformers: {install_hint('judge')}; or pass --tokenizer") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:  # transformers raises many kinds for a file it cannot convert
        raise MaskdiffError(f"cannot read the tokenizer of {path}: {' '.join(str(err).split())[:200]}; pass --tokenizer") from None
    return json.loads(tokenizer.backend_tokenizer.to_str())
