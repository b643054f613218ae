"""The installed package is what `import maskdiff` loads, wherever a script runs from."""

import subprocess
import sys
from pathlib import Path

import maskdiff

REPO = Path(maskdiff.__file__).resolve().parent.parent.parent


def test_a_clone_named_maskdiff_does_not_shadow_the_package(tmp_path):
    # the repository cloned into a folder named maskdiff, and a script run from the folder above it
    clone = tmp_path / "maskdiff"
    for entry in REPO.iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            (clone / entry.name).mkdir(parents=True)
    (clone / "README.md").write_text("a clone\n")
    proc = subprocess.run(
        [sys.executable, "-c", "import maskdiff; print(maskdiff.__file__); maskdiff.load"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == Path(maskdiff.__file__).resolve()
