"""What every importer hands back: a Llama-shaped model read lazily from its source."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from maskdiff.bpe import BPETokenizer
from maskdiff.interop.layout import LlamaWeights, Vocab

# the objective sections of imported models: SMDM, LLaDA and Dream train masked diffusion with the
# linear schedule (the 1/t weighting); causal LMs are autoregressive
MASKED_DIFFUSION = {"name": "md4", "schedule": "linear"}
AUTOREGRESSIVE = {"name": "ar"}


@dataclass
class ImportSource:
    """A checkpoint ready to become a run folder; nothing is read from its weights yet."""

    format: str  # smdm, llada, dream, hf, gguf
    model: dict  # the model section's fields
    objective: dict  # the objective section's fields: MASKED_DIFFUSION or AUTOREGRESSIVE
    seq_len: int  # the run's data.seq_len: the context its samples and scores use by default
    vocab: Vocab
    tokenizer: BPETokenizer
    weights: LlamaWeights  # role -> reader (maskdiff/interop/layout.py)
    shapes: dict[str, tuple[int, ...]]  # role -> the shape in the source
    names: dict[str, str] = field(default_factory=dict)  # role -> the tensor's name in the source, for messages
    dtype: torch.dtype = torch.float32  # what the run's weights are stored as
    about: dict = field(default_factory=dict)  # facts for import.json


def storage_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """Keep a floating-point source's precision (bf16 stays bf16); anything else becomes float32."""
    return dtype if dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
