"""``maskdiff eval --task reverse-curse``: exact-match accuracy on questions about facts, in both directions.

The questions are those of :mod:`maskdiff.data.facts` (test.jsonl: prompt, response, ``direction``
forward or reverse, ``group`` one-way or both-ways). Each question is answered by greedy decoding
after its prompt, and an answer counts when the text up to the end-of-text equals the expected
response exactly:

- an autoregressive model decodes left to right on its KV cache, taking the most likely token
  each step, until it emits the end-of-text (or the sequence is full); it is not told the
  answer's length;
- a masked diffusion model is given the prompt, an answer slot of the expected response's length
  plus one position for the end-of-text, and the padding after it, as in fine-tuning
  (maskdiff/data/pairs.py); the slot is decoded one token per step, the most confident position
  first (low-confidence remasking at temperature 0). It is told the answer's length (in
  characters), which the autoregressive model is not: the comparison favours it by that much.

Accuracy is reported per direction and group; the reverse curse is forward accuracy without
reverse accuracy on the one-way group. A masked diffusion model is also asked the reverse
question as a blank in the sentence it was trained on (infill.jsonl, "[[4]] is the quiet
potter." -> "Toma"; direction ``reverse-infill``), decoded the same way with the rest of the
sentence and the padding given; an autoregressive model cannot fill a blank before given text,
so that column is left empty for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from maskdiff.checkpoint import load_run
from maskdiff.data.facts import DIRECTIONS, GROUPS
from maskdiff.data.pairs import Pair, check_characters, read_pairs
from maskdiff.errors import MaskdiffError, plural
from maskdiff.generation.frontend import run_sampler
from maskdiff.generation.text import INFILL_SLOT, conditioning
from maskdiff.hardware import resolve_device, resolve_precision
from maskdiff.sampling import SamplerOptions, SamplingRequest
from maskdiff.tokenizer import CharTokenizer

INFILL = "reverse-infill"  # the reverse question as a blank in the trained sentence (masked diffusion only)
COLUMNS = (*DIRECTIONS, INFILL)
AR_DECODING = "greedy left-to-right decoding on the KV cache until the end of text"
MDM_DECODING = "greedy low-confidence decoding (one token per step) of an answer slot of the known length, padding given"


@dataclass(frozen=True)
class Question:
    prompt: str  # the text before the answer, or for reverse-infill the template with its [[n]] blank
    answer: str
    direction: str  # forward (name -> description), reverse (description -> name) or reverse-infill
    group: str  # one-way (trained forward only) or both-ways (trained in both directions)
    line: int = 0  # in its file


@dataclass
class Accuracy:
    """Exact matches of one direction and group."""

    correct: int = 0
    total: int = 0
    examples: list = field(default_factory=list, repr=False)  # a few (prompt, expected, answered) of the misses

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def to_dict(self) -> dict:
        return {"correct": self.correct, "total": self.total, "accuracy": self.accuracy if self.total else None}


def questions_file(data: str | Path) -> Path:
    """test.jsonl of a facts folder, or the file itself."""
    path = Path(data)
    return path / "test.jsonl" if path.is_dir() else path


def read_questions(data: str | Path) -> list[Question]:
    """The questions of a facts folder (its test.jsonl) or of a JSONL file with prompt, response, direction and group."""
    path = questions_file(data)
    out = []
    for pair in read_pairs(path):
        direction, group = pair.fields.get("direction"), pair.fields.get("group")
        if direction not in DIRECTIONS or group not in GROUPS:
            raise MaskdiffError(
                f"{path}:{pair.line}: a question needs 'direction' ({' or '.join(DIRECTIONS)}) and 'group' ({' or '.join(GROUPS)}), "
                f"got {direction!r} and {group!r}; `maskdiff facts` writes such files"
            )
        out.append(Question(pair.prompt, pair.response, direction, group, pair.line))
    return out


def read_infill(data: str | Path) -> list[Question]:
    """The blanks of a facts folder's infill.jsonl (none when the folder has no such file)."""
    path = Path(data) / "infill.jsonl"
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(Question(str(row["template"]), str(row["answer"]), INFILL, str(row["group"]), number))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise MaskdiffError(f"{path}:{number}: expected a JSON object with 'template', 'answer' and 'group' ({err})") from None
    return out


def exact_match(questions: list[Question], answers: list[str], keep_misses: int = 3) -> dict[tuple[str, str], Accuracy]:
    """Exact-match accuracy per (direction, group): an answer counts when it equals the expected response."""
    if len(questions) != len(answers):
        raise MaskdiffError(f"{len(answers)} answers for {len(questions)} questions")
    table = {(d, g): Accuracy() for g in GROUPS for d in COLUMNS}
    for q, answer in zip(questions, answers):
        cell = table[(q.direction, q.group)]
        cell.total += 1
        if answer == q.answer:
            cell.correct += 1
        elif len(cell.examples) < keep_misses:
            cell.examples.append((q.prompt, q.answer, answer))
    return table


def answer_questions(
    model,
    tokenizer,
    eos: str,
    seq_len: int,
    questions: list[Question],
    batch_size: int = 64,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """The model's answer to every question: the decoded text after the prompt, up to the end of text
    (see the module docstring for how each kind of model decodes)."""
    if len(eos) != 1 or eos not in tokenizer.chars:
        raise MaskdiffError(f"the end-of-text {eos!r} is not one character of the run's vocabulary")
    eos_id, mask_id = int(tokenizer.encode(eos)[0]), model.mask_id
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        if any(q.direction == INFILL for q in batch):
            raise MaskdiffError("reverse-infill questions are blanks in a sentence: answer them with answer_blanks")
        prompts = [tokenizer.encode(q.prompt) for q in batch]
        slots = [len(q.answer) + 1 for q in batch]  # the answer and its end of text
        given = torch.full((len(batch), seq_len), mask_id, dtype=torch.long)
        for row, (prompt, slot) in enumerate(zip(prompts, slots)):
            if prompt.numel() + slot > seq_len:
                raise MaskdiffError(f"the question {batch[row].prompt!r} and its answer do not fit the run's {plural(seq_len, 'token')}")
            given[row, : prompt.numel()] = prompt
            if not model.left_to_right:
                given[row, prompt.numel() + slot :] = eos_id  # the padding, given as in fine-tuning
        if model.left_to_right:
            options = SamplerOptions(temperature=0.0, eos_id=eos_id, truncate_after_eos=True)
            steps = seq_len
        else:
            options = SamplerOptions(method="low_confidence", tokens_per_step=1, temperature=0.0)
            steps = max(slots)
        final = run_sampler(model, SamplingRequest(len(batch), seq_len, steps, options, given=given), device=device, dtype=dtype).final.z.cpu()
        for row, prompt in enumerate(prompts):
            ids = final[row, prompt.numel() :].tolist()
            answers.append(tokenizer.decode(ids[: ids.index(eos_id)] if eos_id in ids else ids))
    return answers


def answer_blanks(
    model,
    tokenizer,
    eos: str,
    seq_len: int,
    questions: list[Question],
    batch_size: int = 64,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """A masked diffusion model's answers to reverse-infill questions: the blank of each template
    decoded greedily (low confidence first, one token per step), the rest of the sentence and the
    padding after it given. An autoregressive model is refused: it cannot fill a blank before given text."""
    if model.left_to_right:
        raise MaskdiffError("an autoregressive model cannot fill a blank before given text (reverse-infill questions)")
    eos_id = int(tokenizer.encode(eos)[0])
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        rows = []
        for q in questions[start : start + batch_size]:
            template = conditioning(tokenizer, model.mask_id, seq_len, None, q.prompt)
            assert template is not None
            if template.numel() >= seq_len:
                raise MaskdiffError(f"the template {q.prompt!r} does not fit the run's {plural(seq_len, 'token')} with its end of text")
            rows.append(torch.cat([template, torch.full((seq_len - template.numel(),), eos_id, dtype=torch.long)]))
        given = torch.stack(rows)
        blanks = given == model.mask_id
        options = SamplerOptions(method="low_confidence", tokens_per_step=1, temperature=0.0)
        steps = int(blanks.sum(-1).max())
        final = run_sampler(model, SamplingRequest(len(rows), seq_len, steps, options, given=given), device=device, dtype=dtype).final.z.cpu()
        answers += [tokenizer.decode(final[row][blanks[row]].tolist()) for row in range(len(rows))]
    return answers


def evaluate_reverse_curse(
    checkpoint: str | Path,
    data: str | Path,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    weights: str = "ema",
) -> tuple[dict[tuple[str, str], Accuracy], dict]:
    """Exact-match accuracy of a run trained on prompt/response pairs (``data.eos`` is its end of
    text) on the questions in ``data`` (a facts folder or its test.jsonl), and what was evaluated."""
    if batch_size < 1:
        raise MaskdiffError(f"batch size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    run = load_run(checkpoint, weights=weights, device=dev)
    if not run.config.data.eos:
        raise MaskdiffError(
            f"{run.run_dir} has no end-of-text character: the reverse-curse task needs a run trained on prompt/response pairs "
            "(maskdiff finetune, or maskdiff train --set data.format=pairs --set data.eos=CHAR)"
        )
    assert isinstance(run.tokenizer, CharTokenizer)  # a run with an end of text was trained on pairs of text
    questions = read_questions(data)
    check_characters([Pair(q.prompt, q.answer, q.line) for q in questions], run.tokenizer, run.config.data.eos, questions_file(data))
    blanks = read_infill(data) if not run.model.left_to_right and Path(data).is_dir() else []
    stripped = [Pair(INFILL_SLOT.sub("", q.prompt), q.answer, q.line) for q in blanks]
    check_characters(stripped, run.tokenizer, run.config.data.eos, Path(data) / "infill.jsonl")
    eos, seq_len, dtype = run.config.data.eos, run.config.data.seq_len, resolve_precision(precision, dev)
    answers = answer_questions(run.model, run.tokenizer, eos, seq_len, questions, batch_size, dev, dtype)
    if blanks:
        answers += answer_blanks(run.model, run.tokenizer, eos, seq_len, blanks, batch_size, dev, dtype)
        questions += blanks
    info = {
        "task": "reverse-curse",
        "checkpoint": str(run.checkpoint),
        "step": run.step,
        "data": str(questions_file(data)),
        "num_questions": len(questions),
        "decoding": AR_DECODING if run.model.left_to_right else MDM_DECODING,
    }
    return exact_match(questions, answers), info
