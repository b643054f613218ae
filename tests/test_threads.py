"""--threads: every computing subcommand takes it; auto gives up extra threads while the cores are busy."""

import subprocess
import sys
import time

import pytest
import torch

import maskdiff.hardware as hardware
from maskdiff.cli import build_parser, main
from maskdiff.errors import MaskdiffError


@pytest.mark.parametrize("command", ["train", "sample", "eval"])
def test_every_computing_subcommand_takes_threads(command):
    args = build_parser().parse_args([command, "--threads", "3"] + (["--checkpoint", "x"] if command != "train" else []))
    assert args.threads == 3


def test_a_requested_count_is_used_and_a_bad_one_refused(monkeypatch):
    assert hardware.choose_threads(3) == 3
    with pytest.raises(MaskdiffError, match="--threads must be >= 1"):
        hardware.choose_threads(0)


def test_auto_uses_the_processes_share_of_the_cores_and_one_while_they_are_busy(monkeypatch):
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(hardware, "other_busy_cores", lambda: 0.1)
    assert hardware.choose_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes share the machine
    assert hardware.choose_threads() == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(hardware, "other_busy_cores", lambda: 1.0)
    assert hardware.choose_threads() == 1


def test_other_busy_cores_sees_a_busy_process():
    quiet = hardware.other_busy_cores(0.3)
    if quiet is None:
        pytest.skip("no /proc/stat here")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert hardware.other_busy_cores(0.3) >= 0.5
    finally:
        busy.kill()
        busy.wait()


def test_the_cli_restores_the_callers_thread_count(tmp_path, capsys):
    before = torch.get_num_threads()
    main(["eval", "--checkpoint", str(tmp_path / "none"), "--threads", "1"])
    assert torch.get_num_threads() == before
