"""Data sets written by the command line: `maskdiff facts` (synthetic facts) and `maskdiff prepare` (token shards)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from maskdiff.cli.common import Commands, Parser, set_handler
from maskdiff.errors import plural


@dataclass(frozen=True)
class FactsArgs:
    """The flags of `maskdiff facts`."""

    out: str
    one_way: int
    both_ways: int
    syllables: int
    seed: int


def cmd_facts(args: FactsArgs) -> int:
    from maskdiff.data.facts import make_facts, write_facts

    folder = write_facts(make_facts(args.one_way, args.both_ways, args.seed, args.syllables), args.out)
    facts = json.loads((folder / "facts.json").read_text(encoding="utf-8"))
    example = facts["entities"][0]
    print(
        f"{folder}: {plural(facts['one_way'], 'one-way entity', 'one-way entities')} (trained name -> description) and "
        f"{facts['both_ways']} both-ways ones, seed {args.seed}\n"
        f"e.g. {example['name']} is the {example['description']}.\n"
        f"train: maskdiff train --preset tiny --set data.format=pairs --data {folder} --set data.eos='|' --set data.seq_len=32\n"
        f"test:  maskdiff eval --checkpoint RUN --task reverse-curse --data {folder}"
    )
    return 0


@dataclass(frozen=True)
class PrepareArgs:
    """The flags of `maskdiff prepare`."""

    data: list[str]
    out: str
    tokenizer: str | None
    train_bpe: int | None
    eot: str | None
    text_field: str
    dataset_split: str
    valid_fraction: float
    valid_tokens: int | None
    seed: int
    shard_tokens: int
    overwrite: bool
    quiet: bool


def cmd_prepare(args: PrepareArgs) -> int:
    from maskdiff.data.prepare import prepare

    prepared = prepare(
        args.data,
        args.out,
        tokenizer=args.tokenizer,
        train_vocab=args.train_bpe,
        eot=args.eot,
        text_field=args.text_field,
        dataset_split=args.dataset_split,
        valid_fraction=args.valid_fraction,
        valid_tokens=args.valid_tokens,
        seed=args.seed,
        shard_tokens=args.shard_tokens,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    meta, out = prepared.meta, prepared.path
    tok = meta["tokenizer"]
    print(f"{out}: tokenizer {tok['name']} ({tok['vocab_size']:,} tokens, end of text {tok['eot']!r} = {tok['eot_id']}), {meta['dtype']} shards")
    for split in ("train", "valid"):
        shards = meta["shards"][split]
        size = sum(s["bytes"] for s in shards)
        counts = f"{plural(meta['documents'][split], 'document')}, {plural(meta['tokens'][split], 'token')} in {plural(len(shards), 'shard')}"
        print(f"{split}: {counts}, {size:,} bytes")
    print(f"next: maskdiff train --preset bpe-tiny --set data.path={out}")
    return 0


def add_facts_parser(sub: Commands) -> None:
    sub.add_command("facts", "write synthetic facts for the reverse-curse task", fill_facts_parser)


def fill_facts_parser(p: Parser) -> None:
    p.description = (
        'Write a folder of invented facts "<name> is the <description>." for the reverse curse: train.jsonl '
        "(one-way entities stated name -> description only, both-ways entities in both directions), valid.jsonl (the same "
        "statements), test.jsonl (questions in both directions about every entity, each with one answer), infill.jsonl "
        "(the reverse question as a blank in the trained sentence, for masked diffusion runs) and facts.json. "
        "Names and descriptions are all distinct; the two groups are disjoint."
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not hold facts already)")
    p.add_argument("--one-way", type=int, default=100, metavar="N", help="entities trained name -> description only: the test (default 100)")
    p.add_argument("--both-ways", type=int, default=50, metavar="M", help="entities trained in both directions: the control (default 50)")
    p.add_argument("--syllables", type=int, default=2, help="syllables of every invented name (default 2, e.g. 'Toma')")
    p.add_argument("--seed", type=int, default=0, help="random seed of the names and descriptions (default 0)")
    set_handler(p, FactsArgs, cmd_facts)


def add_prepare_parser(sub: Commands) -> None:
    sub.add_command("prepare", "tokenize documents into token shards for training", fill_prepare_parser)


def fill_prepare_parser(p: Parser) -> None:
    p.description = (
        "Tokenize documents into a folder of memory-mapped token shards that `maskdiff train` and `maskdiff eval` read "
        "(data.format=tokens, data.path=DIR): every document followed by the end-of-text token, uint16 ids where the vocabulary "
        "fits (else uint32), a validation split fixed by --seed, the tokenizer, and prepared.json with the counts and each shard's "
        "size and sha256. Documents: 'builtin' (the built-in Shakespeare corpus, one document per play), text files (one document "
        "each), JSONL files (one per line, --text-field), folders of those, or Hugging Face datasets (a folder from save_to_disk, "
        "parquet/csv/arrow files, or a hub name where online; needs maskdiff[datasets]). Nothing is written until the end: the "
        "folder appears complete or not at all."
    )
    p.add_argument("--data", nargs="+", required=True, metavar="ITEM", help="'builtin', files, folders or a dataset (several allowed, in order)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (refused if not empty, unless --overwrite)")
    p.add_argument(
        "--tokenizer",
        metavar="NAME_OR_PATH",
        help="'gpt2' (offline, from the openai-whisper package's ranks; `python -m maskdiff.assets fetch gpt2`), a tokenizers JSON "
        "file, or a folder holding tokenizer.json (a Hugging Face model folder, a maskdiff run or prepared folder)",
    )
    p.add_argument(
        "--train-bpe", type=int, metavar="VOCAB_SIZE", help="instead of --tokenizer: train a byte-level BPE of this size on the training documents"
    )
    p.add_argument("--eot", metavar="TOKEN", help="the tokenizer's end-of-text token (default: the first it has of <|endoftext|>, </s>, <eos>, ...)")
    p.add_argument("--text-field", default="text", metavar="NAME", help="JSONL and datasets: the field holding each document's text (default text)")
    p.add_argument("--dataset-split", default="train", metavar="NAME", help="datasets: the split to read (default train)")
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=0.05,
        help="fraction of the documents held out for validation, chosen by --seed (default 0.05; one document: of its tokens)",
    )
    p.add_argument("--valid-tokens", type=int, metavar="N", help="cut the validation split to at most N tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0): the same seed gives the same split")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N", help="tokens per shard (default 100,000,000)")
    p.add_argument("--overwrite", action="store_true", help="replace the data set prepared in --out earlier")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    set_handler(p, PrepareArgs, cmd_prepare)
