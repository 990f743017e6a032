"""Opportunistic batching: requests that arrive while the model is busy are answered by one `infer_batch`.

One consumer task takes the oldest waiting request plus every other request already waiting (up to
`max_batch_size`) and runs `Policy.infer_batch` on them in a worker thread, so the event loop keeps
answering websocket pings and reading other connections while the model runs. No request ever waits
for a batch to fill: a lone client is served at once, and batches form only from requests that
queued up behind a running one. The queue holds at most one request per open connection (the
protocol is lock-step), so it is bounded by the number of connections.

Each request keeps its own noise: a seeded request draws `Policy.noise(1, seed)`, exactly what
`Policy.infer(observation, seed=seed)` uses, so batching does not change its actions beyond float
rounding. If a batch fails, its requests are rerun one by one, so a bad observation fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from pg_vla.policy import Policy
from pg_vla.serving.observations import InferenceRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceResult:
    """Actions for one request and how long it took."""

    actions: np.ndarray  # (H, A) float32, robot units
    infer_ms: float  # wall time of the Policy.infer_batch call that produced it (shared by the batch)
    queue_ms: float  # time waiting for the model before that call started
    batch_size: int


@dataclass
class _Pending:
    request: InferenceRequest
    future: asyncio.Future[InferenceResult]
    enqueued: float = field(default_factory=time.perf_counter)


class BatchingRunner:
    """Runs requests through a policy, batching those that wait at the same time."""

    def __init__(self, policy: Policy, max_batch_size: int = 8) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.policy = policy
        self.max_batch_size = max_batch_size
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._consumer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the consumer task (inside the running event loop)."""
        if self._consumer is None:
            self._consumer = asyncio.get_running_loop().create_task(self._consume(), name="policy-batches")

    async def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            try:
                await self._consumer
            except asyncio.CancelledError:
                pass
            self._consumer = None

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Queue a request and wait for its actions; raises the error its inference raised."""
        if self._consumer is None:
            raise RuntimeError("BatchingRunner.start() was not called")
        pending = _Pending(request, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        return await pending.future

    async def _consume(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [p for p in batch if not p.future.done()]  # drop requests whose waiter was cancelled
            if not batch:
                continue
            try:
                outcomes = await asyncio.to_thread(
                    self.run_batch, [p.request for p in batch], [p.enqueued for p in batch]
                )
            except Exception as err:  # noqa: BLE001 - the worker thread could not run: fail this batch only
                outcomes = [err] * len(batch)
            for pending, outcome in zip(batch, outcomes):
                if pending.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)

    def run_batch(
        self, requests: list[InferenceRequest], enqueued: list[float]
    ) -> list[InferenceResult | BaseException]:
        """Infer a batch (in the worker thread); on failure each request alone, so errors stay per request."""
        start = time.perf_counter()
        try:
            actions = self._infer(requests)  # (B, H, A)
        except Exception as err:  # noqa: BLE001 - returned to the request(s) that caused it
            if len(requests) == 1:
                return [err]
            log.info("batch of %d failed (%s); running its requests one by one", len(requests), err)
            return [self.run_batch([r], [t])[0] for r, t in zip(requests, enqueued)]
        infer_ms = (time.perf_counter() - start) * 1000.0
        return [
            InferenceResult(actions[i], infer_ms, (start - t) * 1000.0, len(requests)) for i, t in enumerate(enqueued)
        ]

    def _infer(self, requests: list[InferenceRequest]) -> np.ndarray:
        noise = torch.cat([self.policy.noise(1, r.seed) for r in requests])  # (B, H, A_model)
        return self.policy.infer_batch([r.observation for r in requests], noise=noise)["actions"]  # (B, H, A)
