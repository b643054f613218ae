"""An lm-evaluation-harness model for maskdiff checkpoints, registered as ``maskdiff``.

    import maskdiff.evaluation.lm_eval  # registers the model
    lm_eval.simple_evaluate(model="maskdiff", model_args="checkpoint=runs/x,mc_samples=32", tasks=[...])

or from the shell (the harness has no plugin discovery, so this entry point registers first)::

    python -m maskdiff.evaluation.lm_eval run --model maskdiff --model_args checkpoint=runs/x --tasks ...

- ``loglikelihood(context, continuation)``: minus the Monte Carlo NELBO of the continuation with
  the context never masked (as SMDM and LLaDA score multiple choice), a lower bound on
  log p(continuation | context). It uses the bound's any-order form (LLaDA eq. 6): draw how
  many of the m continuation tokens to mask, l in 1..m (stratified over the K draws), mask l
  random ones and weight their cross-entropy by m / l. For a denoiser that ignores t (the
  default) this has the same expectation as the stratified-t estimator, but its weights are at
  most m instead of 1/t, whose heavy tail makes single estimates erratic. Time-conditioned
  networks see the t at which l/m of the tokens are masked on average. With ``cfg=w`` the
  logits are SMDM's unsupervised guidance u + (w+1)(c - u), where the unconditional pass masks
  the context too. ``is_greedy``: every continuation token is the argmax with the whole
  continuation masked.
- ``loglikelihood_rolling(text)``: the same bound for the whole text in windows of the model's
  sequence length, each window conditioned on the tokens before it that still fit.
- ``generate_until(context, until, max_gen_toks)``: maskdiff's sampler with the context as a
  prompt; the output is cut at the first stop string.

Characters the checkpoint's tokenizer cannot encode are dropped (a warning counts them).
"""

from __future__ import annotations

import sys
import zlib

import torch
from tqdm.auto import tqdm

from maskdiff.errors import MaskdiffError, install_hint, plural

try:
    import lm_eval.models  # noqa: F401  (fills the registry first: registering into an empty one would hide the built-in models)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - exercised only without the extra
    raise MaskdiffError(f"the lm-evaluation-harness adapter needs lm-eval; install with {install_hint('lmeval')}") from None

from maskdiff.checkpoint import load_run
from maskdiff.evaluation.chain_rule import time_for_alpha
from maskdiff.hardware import autocast, resolve_device, resolve_precision
from maskdiff.objectives import DiffusionModel, masked_cross_entropy
from maskdiff.tokenizer import CharTokenizer


@register_model("maskdiff")
class MaskdiffLM(LM):
    """A maskdiff run as an lm-eval model. Arguments arrive from ``--model_args key=value,...``."""

    def __init__(
        self,
        checkpoint: str,
        mc_samples: int = 32,
        cfg: float = 0.0,
        mc_batch_size: int = 64,
        steps: int = 64,
        method: str = "low_confidence",
        max_length: int | None = None,
        seed: int = 0,
        weights: str = "ema",
        device: str = "auto",
        precision: str = "auto",
        progress: bool = False,
        **unused,
    ):
        super().__init__()
        unknown = sorted(set(unused) - {"batch_size", "max_batch_size", "trust_remote_code"})  # what the harness itself passes
        if unknown:
            print(f"maskdiff: warning: model_args not used by maskdiff: {', '.join(unknown)}", file=sys.stderr)
        if int(mc_samples) < 1:
            raise MaskdiffError(f"mc_samples must be >= 1, got {mc_samples}")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # the harness asks for cuda by default
        self.device_ = resolve_device(str(device))
        self.run = load_run(checkpoint, weights=weights, device=self.device_)
        if not isinstance(self.run.model, DiffusionModel) or not isinstance(self.run.tokenizer, CharTokenizer):
            raise MaskdiffError(f"{checkpoint} is not a masked-diffusion text run; the lm-eval model scores text with the NELBO")
        self.model, self.tokenizer = self.run.model, self.run.tokenizer
        self.mc_samples, self.cfg, self.steps, self.method = int(mc_samples), float(cfg), int(steps), method
        # draws per network call; the harness's own batch_size (requests per call) is not used
        self.batch_size = int(mc_batch_size)
        if self.batch_size < 1:
            raise MaskdiffError(f"mc_batch_size must be >= 1, got {mc_batch_size}")
        self.max_length = int(max_length or self.run.config.data.seq_len)
        self.seed, self.progress = int(seed), bool(progress)
        self.dtype = resolve_precision(precision, self.device_)
        self.dropped = 0

    # ------------------------------------------------------------------ helpers
    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text``, dropping what the tokenizer cannot encode.  -> [n]"""
        kept = self.tokenizer.drop_unknown(text)
        if len(kept) != len(text):
            self.dropped += len(text) - len(kept)
        return self.tokenizer.encode(kept)

    def _generator(self, key: str) -> torch.Generator:
        # a stream per request text: a score does not depend on the order or batching of requests
        return torch.Generator(device=self.device_).manual_seed(self.seed * 2**32 + zlib.crc32(key.encode("utf-8")))

    def _logits(self, z: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Denoiser logits [B, L, V] in float32, with unsupervised CFG when ``cfg`` is set.
        ``context`` [B, L] marks the conditioning positions the unconditional pass masks."""
        with torch.no_grad(), autocast(self.device_, self.dtype):
            return self.model.guided_predict(z, t, self.cfg, prompt=context, dtype=torch.float32)

    def score(self, context: torch.Tensor, continuation: torch.Tensor, key: str) -> tuple[float, bool]:
        """(lower bound on log p(continuation | context) in nats, greedy?) for 1-D id tensors;
        ``key`` seeds the draws. A continuation longer than ``max_length`` keeps its last tokens."""
        if continuation.numel() == 0:
            return 0.0, True
        keep = max(0, self.max_length - continuation.numel())  # the context that still fits, from the right
        context = context[context.numel() - keep :] if keep else context[:0]
        x = torch.cat([context, continuation])[-self.max_length :].to(self.device_)
        length, mask_id = x.numel(), self.model.mask_id
        target = torch.zeros(length, dtype=torch.bool, device=self.device_)
        target[length - min(continuation.numel(), length) :] = True  # positions that may be masked
        generator = self._generator(key)
        m = int(target.sum())
        total = 0.0
        u = torch.rand((), generator=generator, dtype=torch.float64, device=self.device_).item()  # one offset for all K strata
        for start in range(0, self.mc_samples, self.batch_size):
            k = min(self.batch_size, self.mc_samples - start)
            # l masked continuation tokens, stratified over the K draws: l_j = 1 + floor(((u + j/K) mod 1) m)
            strata = (u + torch.arange(start, start + k, dtype=torch.float64) / self.mc_samples) % 1.0
            count = (1 + torch.floor(strata * m)).long().clamp_max(m).to(self.device_)  # [k]
            scores = torch.rand((k, length), generator=generator, device=self.device_).masked_fill(~target, 2.0)
            ranks = scores.argsort(-1).argsort(-1)
            masked = ranks < count[:, None]  # l random continuation positions
            x0 = x.expand(k, -1)
            z = torch.where(masked, mask_id, x0)
            # the time at which l of m tokens are masked on average, for time-conditioned networks
            t = time_for_alpha(self.model.schedule, 1 - count.double() / m).float()
            logits = self._logits(z, t, ~target.expand(k, -1))
            ce = masked_cross_entropy(logits, x0, masked)  # [k]
            total += (m / count.double() * ce.double()).sum().item()
        # greedy: all continuation tokens masked at once, each the most likely value
        z = torch.where(target, mask_id, x)[None]
        greedy = bool((self._logits(z, torch.ones(1, device=self.device_), ~target[None])[0, target].argmax(-1) == x[target]).all())
        return -total / self.mc_samples, greedy

    def _requests(self, requests, name: str):
        return tqdm(requests, desc=name, disable=None if self.progress else True, leave=False)  # None: no bar in a log

    def _warn_dropped(self) -> None:
        if self.dropped:
            print(f"maskdiff: warning: dropped {plural(self.dropped, 'character')} the checkpoint's tokenizer cannot encode", file=sys.stderr)
            self.dropped = 0

    # ------------------------------------------------------------------ the LM interface
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """For each (context, continuation): (MC lower bound on log p(continuation | context), is_greedy)."""
        pairs = (request.args for request in self._requests(requests, "loglikelihood"))
        out = [self.score(self.encode(ctx), self.encode(cont), f"{ctx}\0{cont}") for ctx, cont in pairs]
        self._warn_dropped()
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        """For each text: the bound on log p(text), window by window, each window conditioned on the
        up to ``max_length // 2`` tokens before it."""
        out = []
        stride = max(1, self.max_length // 2)
        for request in self._requests(requests, "loglikelihood_rolling"):
            text = request.args[0]
            ids = self.encode(text)
            total = 0.0
            for start in range(0, ids.numel(), stride):
                before = ids[max(0, start - (self.max_length - stride)) : start]
                total += self.score(before, ids[start : start + stride], f"{text}\0{start}")[0]
            out.append(total)
        self._warn_dropped()
        return out

    def generate_until(self, requests) -> list[str]:
        """For each (context, {"until": [...], "max_gen_toks": N}): N sampled tokens after the context
        (which is cut from the left to fit), up to the first stop string."""
        out = []
        for request in self._requests(requests, "generate_until"):
            context, options = request.args
            until = options.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            new = min(int(options.get("max_gen_toks", 64)), self.max_length)
            ids = self.encode(context)
            ids = ids[max(0, ids.numel() - (self.max_length - new)) :]
            given = torch.cat([ids, torch.full((new,), self.model.mask_id, dtype=torch.long)])[None].to(self.device_)
            temperature = float(options.get("temperature", 0.0))
            with autocast(self.device_, self.dtype):
                z = self.model.sample(
                    1,
                    given.shape[1],
                    max(1, min(self.steps, new)),
                    given=given,
                    generator=self._generator(context),
                    method=self.method,
                    temperature=temperature,
                    cfg=self.cfg,
                )
            text = self.tokenizer.decode(z[0, ids.numel() :].tolist())
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
        self._warn_dropped()
        return out


def main(argv: list[str] | None = None) -> None:
    """The ``lm_eval`` command with the ``maskdiff`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
