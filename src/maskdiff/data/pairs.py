"""Prompt/response pairs (JSONL) as padded sequences with a loss mask: the data of conditional fine-tuning.

``data.format=pairs``. ``data.path`` is a JSONL file, one example per line::

    {"prompt": "ROMEO. ", "response": "What light through yonder window breaks?"}

(other fields are ignored, blank lines skipped), or a folder holding ``train.jsonl`` and
optionally ``valid.jsonl`` and ``test.jsonl``. A split without a file of its own is a fixed
random ``data.valid_fraction`` / ``data.test_fraction`` of the training examples.

Every example becomes one sequence of ``data.seq_len`` tokens and a loss mask::

    tokens     prompt   response   eos   eos eos ... eos      (padded with eos to seq_len)
    loss mask  False    True       True  False ...  False

The padding policy: the end-of-text token ``data.eos`` (one character of the vocabulary)
ends every response and is scored like a response token, so the model learns where a response
stops; the padding after it is given (never masked, never scored), so however short a response
is, padding neither dominates its loss nor teaches the model to emit runs of end-of-text. The
prompt is given too. What "given" means for each objective is in maskdiff/objectives/base.py:
a masked diffusion model never masks those positions, an autoregressive one does not score them.

Training batches are ``{"x0": ids [B, L], "loss_mask": bool [B, L]}`` of random examples,
resumable through the generator's state (:class:`RandomPairs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from maskdiff.data.splits import Splits
from maskdiff.errors import MaskdiffError, plural
from maskdiff.tokenizer import CharTokenizer

FIELDS = ("prompt", "response")
SPLIT_FILES = {"train": "train.jsonl", "valid": "valid.jsonl", "test": "test.jsonl"}
SPLIT_SEED = 0  # the held-out examples are the same for every run on the same file


@dataclass(frozen=True)
class Pair:
    """One example: the prompt (given), the response (generated), and where it came from."""

    prompt: str
    response: str
    line: int  # 1-based line number in its file
    fields: dict = field(default_factory=dict, compare=False)  # every field of the line (extra ones included)


def read_pairs(path: str | Path) -> list[Pair]:
    """The examples of a JSONL file, with one-line errors naming the file and the line."""
    path = Path(path)
    if not path.exists():
        raise MaskdiffError(f"pairs file {str(path)!r} does not exist")
    if not path.is_file():
        raise MaskdiffError(f"pairs path {str(path)!r} is not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise MaskdiffError(f"pairs file {str(path)!r} is not UTF-8 text (invalid byte at offset {err.start})") from None
    pairs = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise MaskdiffError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise MaskdiffError(f"{path}:{number}: expected a JSON object with fields 'prompt' and 'response', got {type(row).__name__}")
        missing = [name for name in FIELDS if name not in row]
        if missing:
            raise MaskdiffError(f"{path}:{number}: missing field{'s' if len(missing) > 1 else ''} {' and '.join(map(repr, missing))}")
        wrong = [name for name in FIELDS if not isinstance(row[name], str)]
        if wrong:
            raise MaskdiffError(f"{path}:{number}: field {wrong[0]!r} must be a string, got {type(row[wrong[0]]).__name__}")
        pairs.append(Pair(row["prompt"], row["response"], number, row))
    if not pairs:
        raise MaskdiffError(f"pairs file {str(path)!r} holds no examples")
    return pairs


def check_eos(eos: str, tokenizer: CharTokenizer, texts: str) -> None:
    """Refuse an end-of-text marker that is not one character of the vocabulary, naming ones that would do."""
    if len(eos) != 1:
        raise MaskdiffError(f"the end-of-text marker must be one character, not {eos!r}")
    if eos in tokenizer.chars:
        return
    unused = [c for c in tokenizer.chars if c not in texts]
    hint = f"; characters of the vocabulary the pairs never use: {', '.join(map(repr, unused[:12]))}" if unused else ""
    raise MaskdiffError(
        f"the end-of-text character {eos!r} is not in the run's vocabulary of {plural(tokenizer.vocab_size, 'character')} "
        f"(the vocabulary and the embedding are fixed){hint}"
    )


def check_characters(pairs: list[Pair], tokenizer: CharTokenizer, eos: str, source: str | Path) -> None:
    """Refuse pairs with characters outside the vocabulary (naming them with their counts and the first
    line that has one) or with the end-of-text character inside a prompt or response."""
    problem = tokenizer.describe_unknown("".join(p.prompt + p.response for p in pairs))
    if problem is not None:
        first = next(p for p in pairs if tokenizer.unknown(p.prompt + p.response))
        raise MaskdiffError(f"pairs file {str(source)!r} has {problem} (first on line {first.line})")
    for pair in pairs:
        if eos in pair.prompt or eos in pair.response:
            part = "prompt" if eos in pair.prompt else "response"
            raise MaskdiffError(f"{source}:{pair.line}: the {part} contains the end-of-text character {eos!r}")


def encode_pairs(pairs: list[Pair], tokenizer: CharTokenizer, eos: str, seq_len: int, source: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded sequences and loss masks of ``pairs`` (see the module docstring).  -> (ids [N, L], loss_mask bool [N, L])

    One-line errors for characters outside the vocabulary (all of them, with counts and the first
    line that has one), an end-of-text character inside a prompt or response, and an example
    longer than ``seq_len`` with its end-of-text; ``source`` is the file the pairs came from.
    """
    check_characters(pairs, tokenizer, eos, source)
    eos_id = int(tokenizer.encode(eos)[0])
    ids = torch.full((len(pairs), seq_len), eos_id, dtype=torch.long)
    loss_mask = torch.zeros((len(pairs), seq_len), dtype=torch.bool)
    for row, pair in enumerate(pairs):
        prompt, response = tokenizer.encode(pair.prompt), tokenizer.encode(pair.response)
        used = prompt.numel() + response.numel() + 1
        if used > seq_len:
            raise MaskdiffError(
                f"{source}:{pair.line}: prompt and response take {plural(used, 'token')} with the end of text, "
                f"more than data.seq_len={seq_len}; raise data.seq_len or shorten the example"
            )
        ids[row, : prompt.numel()] = prompt
        ids[row, prompt.numel() : used - 1] = response
        loss_mask[row, prompt.numel() : used] = True  # the response and its end of text
    return ids, loss_mask


@dataclass
class PairSplits(Splits):
    """Splits of a pairs data set: flat token streams of whole padded examples, and their loss masks."""

    seq_len: int = 0
    loss_masks: dict = field(default_factory=dict)  # split name -> flat bool tensor, like the tokens

    def loss_mask(self, name: str) -> torch.Tensor | None:
        self.get(name)  # a clear error for an unknown split name
        return self.loss_masks[name]

    def examples(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples of a split as rows.  -> (ids [N, L], loss_mask [N, L])"""
        return self.get(name).view(-1, self.seq_len), self.loss_masks[name].view(-1, self.seq_len)


def split_files(path: Path) -> dict[str, Path]:
    """The JSONL file of each split that has one: ``path`` itself for train, or the files of a folder."""
    if not path.exists():
        raise MaskdiffError(f"pairs data {str(path)!r} does not exist")
    if not path.is_dir():
        return {"train": path}
    files = {name: path / file for name, file in SPLIT_FILES.items() if (path / file).is_file()}
    if "train" not in files:
        raise MaskdiffError(f"pairs folder {str(path)!r} has no train.jsonl")
    return files


def load_pair_splits(data_cfg) -> dict[str, tuple[list[Pair], Path]]:
    """The examples of each split and the file they came from (held-out ones: the training file)."""
    if not data_cfg.path:
        raise MaskdiffError("data.format=pairs needs data.path: a JSONL file of prompt/response pairs, or a folder with train.jsonl")
    files = split_files(Path(data_cfg.path))
    read = {name: read_pairs(file) for name, file in files.items()}
    train = read["train"]
    held_out = [name for name in ("valid", "test") if name not in read]
    fractions = {"valid": data_cfg.valid_fraction, "test": data_cfg.test_fraction}
    counts = {name: int(len(train) * fractions[name]) for name in held_out}
    if held_out and (min(counts.values()) < 1 or len(train) - sum(counts.values()) < 1):
        wanted = " and ".join(f"{fractions[name]:.0%} for {'validation' if name == 'valid' else 'testing'}" for name in held_out)
        raise MaskdiffError(
            f"{plural(len(train), 'example')} in {str(files['train'])!r} {'is' if len(train) == 1 else 'are'} "
            f"too few to hold out {wanted} with at least one example each; "
            "use more examples, larger data fractions, or a folder with valid.jsonl and test.jsonl"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    parts: dict[str, tuple[list[Pair], Path]] = {}
    start = 0
    for name in held_out:
        parts[name] = ([train[i] for i in sorted(order[start : start + counts[name]])], files["train"])
        start += counts[name]
    parts["train"] = ([train[i] for i in sorted(order[start:])], files["train"])
    for name in ("valid", "test"):
        if name in read:
            parts[name] = (read[name], files[name])
    return parts


def prepare_pairs(data_cfg, tokenizer: CharTokenizer | None = None) -> tuple[CharTokenizer, PairSplits]:
    """Read a pairs DataConfig: the tokenizer (given: a fine-tuned run's source vocabulary, checked to
    cover the pairs and ``data.eos``; None: built from the pairs' characters and the end-of-text)
    and the splits as padded examples with loss masks."""
    if not isinstance(tokenizer, (CharTokenizer, type(None))):
        raise MaskdiffError("prompt/response pairs need a character tokenizer; this run was trained on images")
    parts = load_pair_splits(data_cfg)
    texts = "".join(p.prompt + p.response for pairs, _ in parts.values() for p in pairs)
    if tokenizer is None:
        tokenizer = CharTokenizer(sorted(set(texts) | set(data_cfg.eos)))
    check_eos(data_cfg.eos, tokenizer, texts)
    for source in dict.fromkeys(source for _, source in parts.values()):  # each file whole, held-out examples included
        in_file = sorted((p for pairs, s in parts.values() if s == source for p in pairs), key=lambda p: p.line)
        check_characters(in_file, tokenizer, data_cfg.eos, source)
    tokens, masks = {}, {}
    for name, (pairs, source) in parts.items():
        ids, loss_mask = encode_pairs(pairs, tokenizer, data_cfg.eos, data_cfg.seq_len, source)
        tokens[name], masks[name] = ids.reshape(-1), loss_mask.reshape(-1)
    return tokenizer, PairSplits(tokens["train"], tokens["valid"], tokens["test"], seq_len=data_cfg.seq_len, loss_masks=masks)


class RandomPairs:
    """Endless batches of random examples, ``{"x0": [B, L], "loss_mask": [B, L]}``; resumable through its state."""

    def __init__(self, ids: torch.Tensor, loss_mask: torch.Tensor, batch_size: int, seed: int):
        self.ids, self.mask, self.batch_size = ids, loss_mask, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        index = torch.randint(0, self.ids.shape[0], (self.batch_size,), generator=self.generator)
        return {"x0": self.ids[index], "loss_mask": self.mask[index]}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def pair_batches(splits: PairSplits, data_cfg, num_classes: int, batch_size: int, seed: int) -> RandomPairs:
    """Training batches of a pairs run: random whole examples with their loss masks."""
    ids, loss_mask = splits.examples("train")
    return RandomPairs(ids, loss_mask, batch_size, seed)
