"""The batching worker: a bounded queue of jobs and one thread that runs the network.

Requests become :class:`Job` s. A sampling job carries a :class:`~maskdiff.sampling.SamplingRequest`:
its rows' conditioning (``given``, ``labels``), their random-stream seeds
(:func:`maskdiff.sampling.stream_seeds`) and the options, so the worker can sample the rows of
several compatible jobs (equal :attr:`Job.key`: the same length, steps and sampler options) as
one batch through :func:`maskdiff.generation.run_sampler` and every row
still draws exactly the numbers it would draw alone. Other work (scoring a text) runs alone.

The worker runs in its own thread, so the event loop serving HTTP stays responsive; it hands
states and results back through each job's :class:`Sink`. A job cancelled while it waits leaves
the queue at once; a running batch whose jobs are all cancelled stops at its next step.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from maskdiff.errors import MaskdiffError
from maskdiff.generation.frontend import TokenLogprobs, run_sampler, token_logprobs
from maskdiff.objectives import Objective
from maskdiff.sampling import SamplingRequest, Step, combine
from maskdiff.serve.limits import Limits
from maskdiff.serve.requests import RequestError


class Sink:
    """Hands items from the worker thread to one request's coroutine on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop has closed: the server is shutting down
            pass


@dataclass
class State:
    """An intermediate state of a job's rows."""

    job: Job
    step: int
    total: int
    nfe: int
    elapsed: float
    z: torch.Tensor  # [rows, length], the mask id where still masked


@dataclass
class Done:
    """A finished job: its final rows (sampling) or its value (other work)."""

    job: Job
    z: torch.Tensor | None
    nfe: int
    seconds: float
    value: Any = None
    logprobs: TokenLogprobs | None = None  # of the final rows, when the job asked for them


@dataclass
class Failed:
    job: Job
    error: Exception


@dataclass(eq=False)  # a job is itself: compared by identity (its fields hold tensors)
class Job:
    """One unit of work for the worker: rows to sample (``request``, with its own stream seeds) or ``work`` to call."""

    sink: Sink
    request: SamplingRequest | None = None
    watch: bool = False  # send every intermediate state
    logprobs: int | None = None  # also the tokens' log-probabilities, with this many alternatives each
    work: Callable[[], Any] | None = None  # instead of sampling: called alone in the worker thread
    tag: Any = None  # the request's own bookkeeping
    cancelled: bool = False

    @property
    def key(self) -> Hashable | None:
        """Jobs with equal keys can share a batch; None runs alone."""
        if self.request is None:
            return None
        return self.request.key()

    @property
    def rows(self) -> int:
        return 0 if self.request is None else self.request.rows


@dataclass
class Stats:
    batches: int = 0
    rows: int = 0
    largest_batch: int = 0
    cancelled: int = 0
    stopped_batches: int = 0  # batches that stopped early because every job in them was cancelled
    last_batch_seconds: float = 0.0


class Stopped(Exception):
    """Raised from a step callback to end a batch nobody waits for any more."""


@dataclass
class Engine:
    """The bounded queue and the worker thread that samples for the server."""

    model: Objective
    device: torch.device
    dtype: torch.dtype | None
    limits: Limits
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self.pending: list[Job] = []
        self.running: list[Job] = []
        self.lock = threading.Condition()
        self.closing = False
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------ the event loop's side
    def start(self) -> None:
        self.thread = threading.Thread(target=self._work, name="maskdiff-serve-worker", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.lock:
            self.closing = True
            for job in self.pending + self.running:
                job.cancelled = True
            self.pending.clear()
            self.lock.notify_all()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def submit(self, jobs: list[Job]) -> None:
        """Queue the jobs of one request, all or none; a full queue raises a 503 :class:`RequestError`."""
        with self.lock:
            if len(self.pending) + len(jobs) > self.limits.max_queue:
                retry = max(1, math.ceil(self.stats.last_batch_seconds))
                raise RequestError(
                    f"the server is busy: {len(self.pending)} requests are waiting (limit {self.limits.max_queue}); retry in {retry} s",
                    status=503,
                    code="queue_full",
                    headers={"Retry-After": str(retry)},
                )
            self.pending.extend(jobs)
            self.lock.notify_all()

    def cancel(self, jobs: list[Job]) -> None:
        """The client has gone: drop its waiting jobs and let a batch that only it needed stop."""
        with self.lock:
            for job in jobs:
                if not job.cancelled and job in self.pending + self.running:
                    self.stats.cancelled += 1
                job.cancelled = True
            self.pending = [job for job in self.pending if not job.cancelled]

    def info(self) -> dict:
        with self.lock:
            return {"waiting": len(self.pending), "running": sum(not job.cancelled for job in self.running), **vars(self.stats)}

    # ------------------------------------------------------------ the worker thread
    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.pending and not self.closing:
                    self.lock.wait()
                if self.closing:
                    return
                if self.pending[0].key is not None and self.limits.batch_wait > 0:
                    self.lock.wait(self.limits.batch_wait)  # let requests that arrive together share the batch
                    if not self.pending:  # cancelled meanwhile
                        continue
                batch = self._take()
                self.running = batch
            try:
                if batch[0].work is not None:
                    self._call(batch[0])
                else:
                    self._sample(batch)
            finally:
                with self.lock:
                    self.running = []

    def _take(self) -> list[Job]:
        """The oldest job and the waiting jobs compatible with it, up to ``max_batch`` rows (lock held)."""
        first = self.pending[0]
        batch, rows = [first], first.rows
        if first.key is not None:
            for job in self.pending[1:]:
                if job.key == first.key and rows + job.rows <= self.limits.max_batch:
                    batch.append(job)
                    rows += job.rows
        self.pending = [job for job in self.pending if job not in batch]
        return batch

    def _call(self, job: Job) -> None:
        assert job.work is not None
        start = time.perf_counter()
        try:
            value = job.work()
        except Exception as err:  # reported to its request (MaskdiffError: 400, anything else: 500)
            job.sink.put(Failed(job, err))
            return
        job.sink.put(Done(job, None, 0, time.perf_counter() - start, value))

    def _sample(self, batch: list[Job]) -> None:
        spans, row = [], 0
        for job in batch:
            spans.append((row, row + job.rows))
            row += job.rows
        request = combine([job.request for job in batch if job.request is not None])
        start = time.perf_counter()

        def on_step(step: Step) -> None:
            if all(job.cancelled for job in batch):
                raise Stopped
            elapsed = time.perf_counter() - start
            for job, (a, b) in zip(batch, spans):
                if job.watch and not job.cancelled:
                    job.sink.put(State(job, step.index, step.total, step.nfe, elapsed, step.z[a:b].cpu().clone()))

        asked = [job.logprobs for job in batch if job.logprobs is not None]
        try:
            result = run_sampler(self.model, request, device=self.device, dtype=self.dtype, on_step=on_step)
            scores = token_logprobs(self.model, result.final, max(asked)) if asked else None
        except Stopped:
            self.stats.stopped_batches += 1
            return
        except Exception as err:
            for job in batch:
                job.sink.put(Failed(job, err if isinstance(err, MaskdiffError) else RuntimeError(f"{type(err).__name__}: {err}")))
            return
        finally:
            self.stats.last_batch_seconds = time.perf_counter() - start
        self.stats.batches += 1
        self.stats.rows += row
        self.stats.largest_batch = max(self.stats.largest_batch, row)
        for job, (a, b) in zip(batch, spans):
            mine = None
            if scores is not None and job.logprobs is not None:
                top = job.logprobs
                ids, values = scores.top_ids, scores.top_values
                mine = TokenLogprobs(
                    scores.chosen[a:b].cpu(),
                    None if ids is None else ids[a:b, :, :top].cpu(),
                    None if values is None else values[a:b, :, :top].cpu(),
                )
            job.sink.put(Done(job, result.final.z[a:b].cpu(), result.final.nfe, result.seconds, logprobs=mine))
