"""The limits of `maskdiff serve`: what one request may ask for and how much the server takes on at once.

Kept apart from the request models so that the command line can show the defaults without the
optional web packages installed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from maskdiff.errors import MaskdiffError


@dataclass
class Limits:
    """What one request may ask for, and how much the server takes on at once; each is a `maskdiff serve` flag."""

    max_body_bytes: int = 65_536  # request bodies larger than this get 413
    max_length: int = 0  # tokens per generated sequence (prompt included); 0: the run's sequence length
    max_steps: int = 1024  # reverse-process steps per request
    max_samples: int = 16  # sequences per request (n times the number of prompts)
    max_queue: int = 32  # requests waiting for the worker; more get 503 with Retry-After
    max_batch: int = 32  # sequences the worker samples in one batch
    max_score_tokens: int = 4096  # tokens of a text scored by /api/likelihood
    max_mc_samples: int = 64  # Monte Carlo draws per /api/likelihood request
    batch_wait: float = 0.01  # seconds the worker waits for more compatible requests before it starts a batch

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be >= 1, got {value}" for name, value in asdict(self).items() if name not in ("max_length", "batch_wait") and value < 1
        ]
        if self.max_length < 0:
            problems.append(f"max_length must be >= 0, got {self.max_length}")
        if not 0 <= self.batch_wait <= 10:
            problems.append(f"batch_wait must be in [0, 10] seconds, got {self.batch_wait}")
        if self.max_samples > self.max_batch:
            problems.append(f"max_samples ({self.max_samples}) cannot exceed max_batch ({self.max_batch}): a request's rows form one batch")
        if problems:
            raise MaskdiffError("; ".join(problems))
