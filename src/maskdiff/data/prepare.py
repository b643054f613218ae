"""``maskdiff prepare``: documents in, a prepared folder of token shards out (read by :mod:`maskdiff.data.shards`).

Documents come from ``--data`` items, in order: ``builtin`` (the 38 plays of the built-in corpus),
text files (one document each), JSONL files (one document per line, its ``--text-field``), folders
of those, Hugging Face ``datasets`` (a folder saved with ``save_to_disk``, local data files such as
parquet or csv, or a hub name where the machine is online; the ``datasets`` extra).

The validation split is fixed by ``--seed``: a seeded random ``--valid-fraction`` of the documents
(at least one, at most all but one), optionally cut to ``--valid-tokens``; a single document is
split instead, its last ``--valid-fraction`` of tokens held out. The documents are then encoded in
batches by the tokenizers library's threads, each followed by the end-of-text token, and streamed
into shards of ``--shard-tokens`` tokens, so the corpus never has to fit in memory.

Everything is written to a temporary folder beside ``--out`` and renamed into place at the end:
a failed or interrupted prepare leaves no folder that looks prepared. A folder that is not empty
is refused unless ``overwrite``, and even then only when it holds an earlier prepared data set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from maskdiff.bpe import BPETokenizer, resolve_tokenizer, train_bpe
from maskdiff.data.shards import FORMAT, META, SPLITS, TOKENIZER, VERSION, is_prepared, shard_name, token_dtype
from maskdiff.data.text import built_in_documents, read_text
from maskdiff.errors import MaskdiffError, install_hint
from maskdiff.integrity import file_digest

BUILTIN = "builtin"  # the --data name of the built-in corpus
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
DATASET_FILE_TYPES = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow", ".json": "json"}  # read through `datasets`
SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")  # a folder written by save_to_disk
BATCH_DOCUMENTS, BATCH_CHARACTERS = 1024, 1 << 24  # documents per parallel encoding call


@dataclass
class Source:
    """The documents of one ``--data`` item: where from, how many, and a way to read them (again)."""

    name: str
    count: int
    read: Callable[[], Iterator[str]]


# ---------------------------------------------------------------- reading documents
def text_file_source(path: Path) -> Source:
    return Source(str(path), 1, lambda: iter([read_text(path)]))


def jsonl_lines(path: Path, text_field: str) -> Iterator[str]:
    """The ``text_field`` of every line of a JSONL file; one-line errors name the file and line."""
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise MaskdiffError(f"JSONL file {str(path)!r} is not UTF-8 (invalid byte at offset {err.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise MaskdiffError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise MaskdiffError(f"{path}:{number}: expected a JSON object with a string field {text_field!r} (choose the field with --text-field)")
        yield row[text_field]


def jsonl_source(path: Path, text_field: str) -> Source:
    with open(path, "rb") as f:
        count = sum(1 for line in f if line.strip())
    return Source(str(path), count, lambda: jsonl_lines(path, text_field))


def dataset_source(name: str, dataset: Any, text_field: str, split: str) -> Source:
    """The documents of a Hugging Face dataset (a ``DatasetDict`` gives its ``split``)."""
    if isinstance(dataset.column_names, dict):  # a DatasetDict: column names per split
        if split not in dataset:
            raise MaskdiffError(f"dataset {name!r} has no split {split!r}; it has {', '.join(dataset)} (choose with --dataset-split)")
        dataset = dataset[split]
    if text_field not in dataset.column_names:
        raise MaskdiffError(f"dataset {name!r} has no column {text_field!r}; it has {', '.join(dataset.column_names)} (choose with --text-field)")

    def read() -> Iterator[str]:
        for batch in dataset.select_columns([text_field]).iter(batch_size=1000):
            yield from batch[text_field]

    return Source(name, len(dataset), read)


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise MaskdiffError(f"reading Hugging Face datasets needs the datasets package: {install_hint('datasets')}") from None
    return datasets


def offline() -> bool:
    """Whether the user said that the hub is out of reach (the Hugging Face libraries' own switches)."""
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_source(name: str, text_field: str, split: str) -> Source:
    """A dataset on the Hugging Face hub, loaded by ``datasets`` where the machine is online."""
    hint = f"save it where you are online (datasets.load_dataset({name!r}).save_to_disk('DIR')) and pass --data DIR"
    if offline():
        raise MaskdiffError(f"{name!r} is not a local file or folder, and the Hugging Face hub is off (HF_HUB_OFFLINE); {hint}")
    datasets = import_datasets()
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # connection, missing dataset, authentication: all the same to the user here
        raise MaskdiffError(f"could not load dataset {name!r} from the Hugging Face hub ({type(err).__name__}: {err}); offline, {hint}") from None
    return dataset_source(name, dataset, text_field, split)


def folder_sources(path: Path, text_field: str, split: str) -> list[Source]:
    """A saved dataset, or every text and JSONL file under the folder (sorted), or data files for ``datasets``."""
    if any((path / name).is_file() for name in SAVED_DATASET_FILES):
        return [dataset_source(str(path), import_datasets().load_from_disk(str(path)), text_field, split)]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES)
    if files:
        return [jsonl_source(f, text_field) if f.suffix in JSONL_SUFFIXES else text_file_source(f) for f in files]
    if any(p.suffix in DATASET_FILE_TYPES for p in path.rglob("*")):
        return [dataset_source(str(path), import_datasets().load_dataset(str(path), split=split), text_field, split)]
    raise MaskdiffError(f"folder {str(path)!r} holds no documents ({', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} files, or a saved dataset)")


def find_sources(items: list[str], text_field: str = "text", split: str = "train") -> list[Source]:
    """The documents of every ``--data`` item (see the module docstring)."""
    sources: list[Source] = []
    for item in items:
        path = Path(item).expanduser()
        if item == BUILTIN:
            plays = built_in_documents()
            sources.append(Source("built-in corpus", len(plays), plays.__iter__))
        elif path.is_dir():
            sources += folder_sources(path, text_field, split)
        elif path.is_file() and path.suffix in JSONL_SUFFIXES:
            sources.append(jsonl_source(path, text_field))
        elif path.is_file() and path.suffix in DATASET_FILE_TYPES:
            dataset = import_datasets().load_dataset(DATASET_FILE_TYPES[path.suffix], data_files=str(path), split="train")
            sources.append(dataset_source(str(path), dataset, text_field, split))
        elif path.is_file():
            sources.append(text_file_source(path))
        elif path.suffix or item.startswith((".", "/", "~")) or item.count("/") > 1:
            raise MaskdiffError(f"data {item!r} does not exist")
        else:
            sources.append(hub_source(item, text_field, split))
    if not sources or sum(s.count for s in sources) == 0:
        raise MaskdiffError("no documents to prepare")
    return sources


def all_documents(sources: list[Source]) -> Iterator[str]:
    for source in sources:
        yield from source.read()


def batched(texts: Iterable[str]) -> Iterator[list[str]]:
    """Lists of documents for one parallel encoding call: up to BATCH_DOCUMENTS, or BATCH_CHARACTERS."""
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if len(batch) == BATCH_DOCUMENTS or size >= BATCH_CHARACTERS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# ---------------------------------------------------------------- the split and the shards
def validation_documents(count: int, fraction: float, seed: int) -> set[int]:
    """Indices of the held-out documents: a seeded random ``fraction`` of ``count`` (at least one,
    at most all but one); none for a single document (its tokens are split instead)."""
    if count < 2:
        return set()
    held_out = min(count - 1, max(1, round(fraction * count)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return set(order[:held_out].tolist())


class ShardWriter:
    """Token ids appended to shards of ``shard_tokens`` tokens, each with its size and sha256; at most ``limit`` tokens in all."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int, limit: int | None = None):
        self.folder, self.split, self.dtype, self.shard_tokens, self.limit = folder, split, dtype, shard_tokens, limit
        self.records: list[dict] = []
        self.tokens = 0
        self._file: Any = None

    def _open(self) -> None:
        name = shard_name(self.split, len(self.records))
        self._file = open(self.folder / name, "wb")
        self._digest = hashlib.sha256()
        self.records.append({"file": name, "tokens": 0, "bytes": 0, "sha256": ""})

    def _close_shard(self) -> None:
        record = self.records[-1]
        self._file.close()
        self._file = None
        record["bytes"], record["sha256"] = record["tokens"] * self.dtype.itemsize, self._digest.hexdigest()

    def write(self, ids: np.ndarray) -> None:
        if self.limit is not None:
            ids = ids[: max(0, self.limit - self.tokens)]
        while ids.size:
            if self._file is None:
                self._open()
            record = self.records[-1]
            part, ids = ids[: self.shard_tokens - record["tokens"]], ids[self.shard_tokens - record["tokens"] :]
            data = part.astype(self.dtype).tobytes()
            self._file.write(data)
            self._digest.update(data)
            record["tokens"] += part.size
            self.tokens += part.size
            if record["tokens"] == self.shard_tokens:
                self._close_shard()

    def close(self) -> list[dict]:
        if self._file is not None:
            self._close_shard()
        return self.records


@dataclass
class Prepared:
    """What ``maskdiff prepare`` wrote: the folder and its metadata."""

    path: Path
    meta: dict


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a file, a non-empty folder without ``overwrite``, and any non-empty folder that is not an earlier prepared one."""
    if out.exists() and not out.is_dir():
        raise MaskdiffError(f"--out {str(out)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise MaskdiffError(f"--out {str(out)!r} is not empty; pass --overwrite to replace the data prepared there, or choose another folder")
        if not is_prepared(out):
            raise MaskdiffError(f"--out {str(out)!r} holds files that `maskdiff prepare` did not write; --overwrite replaces only prepared data")


def choose_tokenizer(
    tokenizer: str | None, train_vocab: int | None, eot: str | None, training_texts: Callable[[], Iterator[str]], count: int, progress: bool
) -> BPETokenizer:
    """The tokenizer of ``--tokenizer``, or a new BPE trained on the training documents (``--train-bpe``)."""
    if (tokenizer is None) == (train_vocab is None):
        raise MaskdiffError("give either --tokenizer NAME_OR_PATH or --train-bpe VOCAB_SIZE")
    if train_vocab is not None:
        return train_bpe(training_texts(), train_vocab, count, progress)
    assert tokenizer is not None
    return resolve_tokenizer(tokenizer, eot)


def prepare(
    data: list[str],
    out: str | Path,
    tokenizer: str | None = None,
    train_vocab: int | None = None,
    eot: str | None = None,
    text_field: str = "text",
    dataset_split: str = "train",
    valid_fraction: float = 0.05,
    valid_tokens: int | None = None,
    seed: int = 0,
    shard_tokens: int = 100_000_000,
    overwrite: bool = False,
    progress: bool = False,
) -> Prepared:
    """Tokenize the documents of ``data`` into a prepared folder ``out`` (see the module docstring).

    ``tokenizer``: ``gpt2``, a tokenizers JSON file or model folder (``eot`` names its end-of-text
    token when it is not a usual one); or ``train_vocab``: train a byte-level BPE of that size on
    the training documents. Returns the folder and its metadata (``prepared.json``).
    """
    out = Path(out)
    if not 0 < valid_fraction < 0.5:
        raise MaskdiffError(f"--valid-fraction must be in (0, 0.5), got {valid_fraction}")
    if valid_tokens is not None and valid_tokens < 1:
        raise MaskdiffError(f"--valid-tokens must be >= 1, got {valid_tokens}")
    if shard_tokens < 1:
        raise MaskdiffError(f"--shard-tokens must be >= 1, got {shard_tokens}")
    check_out(out, overwrite)
    sources = find_sources(data, text_field, dataset_split)
    count = sum(s.count for s in sources)
    held_out = validation_documents(count, valid_fraction, seed)

    def training_texts() -> Iterator[str]:
        return (text for i, text in enumerate(all_documents(sources)) if i not in held_out)

    bpe = choose_tokenizer(tokenizer, train_vocab, eot, training_texts, count - len(held_out), progress)
    tmp = out.parent / f".{out.name}.preparing-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta = write_folder(tmp, bpe, sources, count, held_out, valid_fraction, valid_tokens, shard_tokens, progress)
        meta.update(sources=[s.name for s in sources], text_field=text_field, seed=seed, valid_fraction=valid_fraction, valid_tokens=valid_tokens)
        (tmp / META).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Prepared(out, meta)


def write_folder(
    folder: Path,
    bpe: BPETokenizer,
    sources: list[Source],
    count: int,
    held_out: set[int],
    valid_fraction: float,
    valid_tokens: int | None,
    shard_tokens: int,
    progress: bool,
) -> dict:
    """Encode every document into ``folder``'s shards and save the tokenizer.  -> the metadata (without the options)"""
    dtype = token_dtype(bpe.vocab_size)
    writers = {
        "train": ShardWriter(folder, "train", dtype, shard_tokens),
        "valid": ShardWriter(folder, "valid", dtype, shard_tokens, limit=valid_tokens),
    }
    documents = dict.fromkeys(SPLITS, 0)
    eot = np.array([bpe.eot_id], dtype=np.int64)
    index = 0
    # disable=None: no bar where stderr is not a terminal (a log)
    with tqdm(total=count, desc="prepare", unit="doc", disable=None if progress else True, dynamic_ncols=True) as bar:
        for batch in batched(all_documents(sources)):
            for ids in bpe.encode_batch(batch):
                tokens = np.concatenate([np.asarray(ids, dtype=np.int64), eot])
                if count == 1:  # one document: its last valid_fraction of tokens is the validation split
                    cut = len(tokens) - max(1, round(valid_fraction * len(tokens)))
                    writers["train"].write(tokens[:cut])
                    writers["valid"].write(tokens[cut:])
                    documents.update(train=1, valid=1)
                else:
                    split = "valid" if index in held_out else "train"
                    writers[split].write(tokens)
                    documents[split] += 1
                index += 1
            bar.update(len(batch))
            bar.set_postfix({"tokens": f"{writers['train'].tokens + writers['valid'].tokens:,}"})
    shards = {split: writer.close() for split, writer in writers.items()}
    if writers["train"].tokens == 0:
        raise MaskdiffError("the documents hold no tokens to train on")
    bpe.tokenizer.save(str(folder / TOKENIZER))
    return {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": {
            "name": bpe.name,
            "file": TOKENIZER,
            "vocab_size": bpe.vocab_size,
            "eot": bpe.eot,
            "eot_id": bpe.eot_id,
            "bytes": (folder / TOKENIZER).stat().st_size,
            "sha256": file_digest(folder / TOKENIZER),
        },
        "dtype": dtype.name,
        "documents": documents,
        "tokens": {split: writer.tokens for split, writer in writers.items()},
        "shards": shards,
    }


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished ``tmp`` where ``out`` is, moving an earlier one aside first and removing it last."""
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
