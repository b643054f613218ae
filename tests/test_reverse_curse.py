"""The reverse curse: the facts generator, its files as fine-tuning data, and exact-match accuracy in both directions."""

import json

import pytest
import torch
from torch import nn

from maskdiff.cli import main
from maskdiff.config import RunConfig
from maskdiff.data import prepare_data
from maskdiff.data.facts import make_facts, question, statement, write_facts
from maskdiff.data.pairs import encode_pairs, read_pairs
from maskdiff.errors import MaskdiffError
from maskdiff.evaluation.reverse_curse import INFILL, Question, answer_blanks, answer_questions, exact_match, read_infill, read_questions
from maskdiff.objectives import Autoregressive, MaskedDiffusion
from maskdiff.tokenizer import CharTokenizer

SEQ_LEN = 40


@pytest.fixture
def facts_dir(tmp_path):
    return write_facts(make_facts(one_way=30, both_ways=10, seed=3), tmp_path / "facts")


def rows(folder, name):
    return [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- the generator
def test_names_and_descriptions_are_all_distinct_and_the_groups_disjoint():
    facts = make_facts(one_way=120, both_ways=60, seed=0)
    one_way, both_ways = facts.group("one-way"), facts.group("both-ways")
    assert (len(one_way), len(both_ways)) == (120, 60)
    names = [e.name for e in facts.entities]
    descriptions = [e.description for e in facts.entities]
    assert len(set(names)) == len(set(descriptions)) == 180
    assert not {e.name for e in one_way} & {e.name for e in both_ways}
    assert not {e.description for e in one_way} & {e.description for e in both_ways}
    assert {len(name) for name in names} == {4} and {len(e.name) for e in make_facts(5, 0, syllables=3).entities} == {6}  # short names
    assert make_facts(120, 60, seed=0) == facts and make_facts(120, 60, seed=1) != facts  # seeded
    with pytest.raises(MaskdiffError, match="at most 256 entities"):
        make_facts(200, 100)


def test_training_states_one_way_facts_forward_only_and_both_ways_facts_in_both_directions(facts_dir):
    facts = make_facts(one_way=30, both_ways=10, seed=3)
    train = [row["response"] for row in rows(facts_dir, "train.jsonl")]
    assert all(row["prompt"] == "" for row in rows(facts_dir, "train.jsonl"))  # whole statements are trained
    assert rows(facts_dir, "valid.jsonl") == rows(facts_dir, "train.jsonl")  # memorisation is the task: nothing held out
    for entity in facts.entities:
        assert statement(entity, "forward") in train
        assert (statement(entity, "reverse") in train) == (entity.group == "both-ways")
        # no training text puts a one-way entity's description before its name
        if entity.group == "one-way":
            assert not any(entity.description in text and text.index(entity.description) < text.find(entity.name) for text in train)
    assert len(train) == 30 + 2 * 10


def test_every_entity_is_asked_in_both_directions_and_every_question_has_one_answer(facts_dir):
    facts = make_facts(one_way=30, both_ways=10, seed=3)
    questions = rows(facts_dir, "test.jsonl")
    assert len(questions) == 2 * 40
    assert {(q["entity"], q["direction"]) for q in questions} == {(i, d) for i in range(40) for d in ("forward", "reverse")}
    for q in questions:
        # the entities a question could be about: those whose name (forward) or description (reverse) its prompt states
        fits = [e for e in facts.entities if question(e, q["direction"])[0] == q["prompt"]]
        assert len(fits) == 1 and question(fits[0], q["direction"])[1] == q["response"]
        assert fits[0].group == q["group"] == facts.entities[q["entity"]].group
    assert json.loads((facts_dir / "facts.json").read_text())["seed"] == 3
    # the reverse question as a blank in the trained sentence: "[[4]] is the <description>." -> the name
    blanks = rows(facts_dir, "infill.jsonl")
    assert [(b["template"], b["answer"]) for b in blanks] == [(f"[[{len(e.name)}]] is the {e.description}.", e.name) for e in facts.entities]
    assert [q.direction for q in read_infill(facts_dir)] == [INFILL] * 40
    with pytest.raises(MaskdiffError, match="already holds train.jsonl"):
        write_facts(facts, facts_dir)


def test_the_files_round_trip_through_the_pairs_data_format(facts_dir):
    cfg = RunConfig().with_overrides(["data.format=pairs", f"data.path={facts_dir}", "data.eos=|", f"data.seq_len={SEQ_LEN}"])
    tokenizer, splits = prepare_data(cfg.data)
    for split, name in (("train", "train.jsonl"), ("valid", "valid.jsonl"), ("test", "test.jsonl")):
        ids, mask = splits.examples(split)
        expected = rows(facts_dir, name)
        assert len(ids) == len(expected)
        for row, example in zip(ids.tolist(), expected):
            text, whole = tokenizer.decode(row), example["prompt"] + example["response"]
            assert text == whole + "|" * (SEQ_LEN - len(whole))
        scored = [tokenizer.decode(r[m]) for r, m in zip(ids, mask)]
        assert scored == [example["response"] + "|" for example in expected]
    assert [q.prompt for q in read_questions(facts_dir)] == [r["prompt"] for r in rows(facts_dir, "test.jsonl")]


# ---------------------------------------------------------------- accuracy
def test_exact_match_counts_each_direction_and_group():
    qs = [
        Question("A is the", " x.", "forward", "one-way"),
        Question("The x is", " A.", "reverse", "one-way"),
        Question("B is the", " y.", "forward", "one-way"),
        Question("The y is", " B.", "reverse", "both-ways"),
    ]
    table = exact_match(qs, [" x.", " B.", " y", " B."])
    assert (table[("forward", "one-way")].correct, table[("forward", "one-way")].total) == (1, 2)
    assert (table[("reverse", "one-way")].correct, table[("reverse", "one-way")].total) == (0, 1)
    assert table[("reverse", "both-ways")].accuracy == 1.0 and table[("forward", "both-ways")].total == 0
    assert table[("reverse", "one-way")].examples == [("The x is", " A.", " B.")]
    with pytest.raises(MaskdiffError, match="3 answers for 4 questions"):
        exact_match(qs, ["a", "b", "c"])


class LookupNet(nn.Module):
    """An oracle of a set of known sequences: at every position it predicts the token of the first known
    sequence that agrees with the input (causal: with the tokens before the position)."""

    def __init__(self, known: torch.Tensor, vocab: int, causal: bool):
        super().__init__()
        self.known, self.vocab, self.causal = known, vocab, causal

    def forward(self, z, t):
        logits = torch.zeros(*z.shape, self.vocab)
        for b in range(z.shape[0]):
            for i in range(z.shape[1]):
                if self.causal:  # inputs (BOS, x_1, ..., x_{n-1}): position i predicts x_{i+1} after x_1..x_i
                    agree = (self.known[:, :i] == z[b, 1 : i + 1]).all(-1)
                else:
                    agree = ((z[b] == self.vocab) | (z[b] == self.known)).all(-1)
                if agree.any():
                    logits[b, i, self.known[agree.nonzero()[0, 0], i]] = 10.0
        return logits


@pytest.mark.parametrize("kind", ["diffusion", "autoregressive"])
def test_an_oracle_of_the_forward_facts_answers_forward_questions_and_not_reverse_ones(facts_dir, kind):
    questions = read_questions(facts_dir)
    pairs = read_pairs(facts_dir / "test.jsonl")
    tokenizer = CharTokenizer(sorted(set("".join(p.prompt + p.response for p in pairs)) | {"|"}))
    sequences, _ = encode_pairs(pairs, tokenizer, "|", SEQ_LEN, "test.jsonl")
    forward = torch.tensor([q.direction == "forward" for q in questions])

    blanks = read_infill(facts_dir)

    def accuracy(known):
        net = LookupNet(known, tokenizer.vocab_size, causal=kind == "autoregressive")
        model = MaskedDiffusion(net, vocab_size=tokenizer.vocab_size) if kind == "diffusion" else Autoregressive(net, tokenizer.vocab_size)
        answers = answer_questions(model, tokenizer, "|", SEQ_LEN, questions, batch_size=32)
        if kind == "diffusion":
            answers += answer_blanks(model, tokenizer, "|", SEQ_LEN, blanks, batch_size=32)
        else:
            with pytest.raises(MaskdiffError, match="cannot fill a blank"):
                answer_blanks(model, tokenizer, "|", SEQ_LEN, blanks)
        table = exact_match(questions + (blanks if kind == "diffusion" else []), answers)
        return {key: cell.accuracy for key, cell in table.items() if cell.total}

    assert set(accuracy(sequences).values()) == {1.0}  # knows every answer
    knows_forward = accuracy(sequences[forward])
    assert knows_forward[("forward", "one-way")] == knows_forward[("forward", "both-ways")] == 1.0
    assert knows_forward[("reverse", "one-way")] == knows_forward[("reverse", "both-ways")] == 0.0
    if kind == "diffusion":  # a blank in the forward sentence is filled from the forward facts alone
        assert knows_forward[(INFILL, "one-way")] == knows_forward[(INFILL, "both-ways")] == 1.0


def test_the_reverse_curse_task_refuses_what_does_not_apply_in_one_line(facts_dir, tmp_path, capsys):
    for argv, message in [
        (["eval", "--task", "reverse-curse", "--data", str(facts_dir)], "needs --checkpoint RUN and --data FACTS"),
        (["eval", "--task", "reverse-curse", "--checkpoint", "x", "--data", str(facts_dir), "-k", "4"], "--mc-samples does not apply"),
        (["facts", "--out", str(facts_dir)], "already holds train.jsonl"),
        (["facts", "--out", str(tmp_path / "more"), "--one-way", "300"], "at most 256 entities"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert main(["facts", "--out", str(tmp_path / "new"), "--one-way", "5", "--both-ways", "2", "--seed", "4"]) == 0
    assert "5 one-way entities" in capsys.readouterr().out and len(rows(tmp_path / "new", "test.jsonl")) == 14
