"""``maskdiff serve``: an HTTP server for a trained run (the optional extra ``maskdiff[serve]``).

OpenAI-style completions (``POST /v1/completions``), likelihoods, sampling with every
intermediate state streamed as server-sent events, and a page at ``/`` that shows the model
unmasking. Requests wait in a bounded queue; one worker thread samples compatible ones as a
batch, each row with its own random stream. Modules: ``limits``, ``requests`` (bodies, errors),
``engine`` (the queue and the worker), ``jobs`` (requests to jobs), ``completions`` (the OpenAI
shape), ``unmasking`` (states and samples), ``app`` (routes, auth, streaming, :func:`serve`).
"""

import importlib
from typing import Any

from maskdiff.serve.limits import Limits

__all__ = ["Limits", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    # the web packages load on first use, so `maskdiff --help` works without the serve extra
    if name in ("create_app", "serve"):
        return getattr(importlib.import_module("maskdiff.serve.app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
