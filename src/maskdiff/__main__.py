"""``python -m maskdiff`` (and ``torchrun -m maskdiff``) runs the CLI."""

from maskdiff.launch import main

if __name__ == "__main__":
    raise SystemExit(main())
