"""The one exception type for problems a user can fix (bad input, bad config, missing files).

The CLI prints these as a single line and exits non-zero; anything else is a bug.
"""


class MaskdiffError(Exception):
    """A user-facing error whose message says what is wrong and, where possible, how to fix it."""
