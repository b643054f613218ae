"""Synthetic facts for the reverse curse: "<name> is the <description>." with invented names.

The reverse curse (Berglund et al.; SMDM tests masked diffusion on it): a model trained on "A is
B" often cannot answer "B is?" with A. :func:`make_facts` draws entities, each an invented name
(consonant-vowel syllables, e.g. "Toma") and a description (an adjective and an occupation, e.g. "quiet
potter"), seeded, with no two entities sharing a name or a description, so every question has
exactly one answer. The entities form two disjoint groups:

- ``one-way``: trained only as "<name> is the <description>." (name -> description). These are
  the test: forward questions ask what was trained, reverse ones what was never stated.
- ``both-ways``: trained in both directions, "<name> is the <description>." and "The
  <description> is <name>.", so that the model sees the reverse form at all; their questions
  are a control (both directions were trained).

:func:`write_facts` writes a folder that ``data.format=pairs`` reads (maskdiff/data/pairs.py):

- ``train.jsonl``: the training statements as prompt/response pairs with an empty prompt (the
  whole statement is the response, so every token of it is trained, as in Berglund et al.);
- ``valid.jsonl``: the same statements (memorising them is the task, so validation measures
  how well they were learned; no fact is held out);
- ``test.jsonl``: the questions, prompt "<name> is the" with response " <description>."
  (forward) and prompt "The <description> is" with response " <name>." (reverse), with their
  ``direction``, ``group`` and ``entity``;
- ``infill.jsonl``: the reverse question in the layout that was trained, for models that fill
  in blanks (masked diffusion): ``template`` "[[4]] is the <description>." (the ``maskdiff sample
  --infill`` syntax) with ``answer`` "<name>", and the ``group`` and ``entity``. It separates
  "knows the name given the description" from "can say it in another sentence";
- ``facts.json``: the entities and the generator's settings.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from maskdiff.errors import MaskdiffError, plural

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
ADJECTIVES = "quiet brave tall clever gentle proud silent bold calm swift wise kind grim merry shy loud".split()
OCCUPATIONS = "baker painter sailor farmer potter weaver singer hunter tailor miner doctor dancer pilot writer gardener smith".split()
GROUPS = ("one-way", "both-ways")
DIRECTIONS = ("forward", "reverse")


@dataclass(frozen=True)
class Entity:
    name: str
    description: str
    group: str  # "one-way" (trained name -> description only) or "both-ways" (trained in both directions)


@dataclass(frozen=True)
class Facts:
    entities: list[Entity]
    seed: int
    syllables: int = 2  # of every name

    def group(self, name: str) -> list[Entity]:
        return [e for e in self.entities if e.group == name]


def statement(entity: Entity, direction: str) -> str:
    """The fact as a sentence: forward "<name> is the <description>.", reverse "The <description> is <name>." """
    return f"{entity.name} is the {entity.description}." if direction == "forward" else f"The {entity.description} is {entity.name}."


def question(entity: Entity, direction: str) -> tuple[str, str]:
    """(prompt, answer) of the question that asks for the other half of the fact in ``direction``."""
    if direction == "forward":
        return f"{entity.name} is the", f" {entity.description}."
    return f"The {entity.description} is", f" {entity.name}."


def invented_name(rng: random.Random, syllables: int = 2) -> str:
    """A name of ``syllables`` consonant-vowel syllables, e.g. "Toma"."""
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(syllables)).capitalize()


def make_facts(one_way: int = 100, both_ways: int = 50, seed: int = 0, syllables: int = 2) -> Facts:
    """``one_way`` + ``both_ways`` entities with distinct names (of ``syllables`` syllables) and
    distinct descriptions, drawn from ``seed``."""
    total = one_way + both_ways
    descriptions = [f"{a} {o}" for a in ADJECTIVES for o in OCCUPATIONS]
    if one_way < 1 or both_ways < 0 or syllables < 1:
        raise MaskdiffError(
            f"need at least one one-way entity, no negative count and names of a syllable or more, got {one_way}, {both_ways} and {syllables}"
        )
    if total > len(descriptions):
        raise MaskdiffError(f"at most {len(descriptions)} entities have distinct descriptions, asked for {total}")
    if total > (len(CONSONANTS) * len(VOWELS)) ** syllables // 2:
        raise MaskdiffError(f"{total} entities need longer names than {plural(syllables, 'syllable')}")
    rng = random.Random(seed)
    chosen = rng.sample(descriptions, total)
    names: list[str] = []
    while len(names) < total:
        name = invented_name(rng, syllables)
        if name not in names:
            names.append(name)
    groups = ["one-way"] * one_way + ["both-ways"] * both_ways
    return Facts([Entity(n, d, g) for n, d, g in zip(names, chosen, groups)], seed, syllables)


def training_rows(facts: Facts) -> list[dict]:
    """The training statements as pairs: every entity forward, the both-ways ones also reversed."""
    rows = []
    for index, entity in enumerate(facts.entities):
        for direction in DIRECTIONS if entity.group == "both-ways" else DIRECTIONS[:1]:
            rows.append({"prompt": "", "response": statement(entity, direction), "entity": index, "group": entity.group, "direction": direction})
    return rows


def question_rows(facts: Facts) -> list[dict]:
    """The questions: every entity in both directions, each with its one answer."""
    rows = []
    for index, entity in enumerate(facts.entities):
        for direction in DIRECTIONS:
            prompt, answer = question(entity, direction)
            rows.append({"prompt": prompt, "response": answer, "entity": index, "group": entity.group, "direction": direction})
    return rows


def infill_rows(facts: Facts) -> list[dict]:
    """The reverse question as a blank in the trained statement: "[[n]] is the <description>." -> "<name>"."""
    return [
        {"template": f"[[{len(e.name)}]] is the {e.description}.", "answer": e.name, "entity": index, "group": e.group}
        for index, e in enumerate(facts.entities)
    ]


def write_facts(facts: Facts, folder: str | Path) -> Path:
    """Write train.jsonl, valid.jsonl, test.jsonl, infill.jsonl and facts.json into ``folder`` (created; existing files refused)."""
    folder = Path(folder)
    names = ("train.jsonl", "valid.jsonl", "test.jsonl", "infill.jsonl", "facts.json")
    existing = [name for name in names if (folder / name).exists()]
    if existing:
        raise MaskdiffError(f"{folder} already holds {', '.join(existing)}; choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    train = training_rows(facts)
    files = (("train.jsonl", train), ("valid.jsonl", train), ("test.jsonl", question_rows(facts)), ("infill.jsonl", infill_rows(facts)))
    for name, rows in files:
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    summary = {
        "seed": facts.seed,
        "syllables": facts.syllables,
        "one_way": len(facts.group("one-way")),
        "both_ways": len(facts.group("both-ways")),
        "entities": [asdict(e) for e in facts.entities],
    }
    (folder / "facts.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return folder
