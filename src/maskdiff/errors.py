"""The one exception type for problems a user can fix (bad input, bad config, missing files), and
the wording its messages share.

The CLI prints these as a single line and exits non-zero; anything else is a bug.
"""


class MaskdiffError(Exception):
    """A user-facing error whose message says what is wrong and, where possible, how to fix it."""


def install_hint(extra: str) -> str:
    """How to install one of maskdiff's optional extras, from PyPI or from a clone of the repository."""
    return f"pip install 'maskdiff[{extra}]' (from a clone: pip install -e '.[{extra}]')"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` with its noun in the right number, thousands separated: "1 sample", "2,048 samples"."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"
