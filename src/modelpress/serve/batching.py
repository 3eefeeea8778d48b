"""Dynamic micro-batching: concurrent requests share one model run.

Requests wait in an ``asyncio`` queue. One worker takes the first, at once joins every request
that queued up meanwhile (those that arrived while the model ran), then keeps collecting until
``max_batch`` rows are pending or ``max_delay_ms`` have passed since the first arrived. The
default delay is 0: no request ever waits for company, batches form only under load (measured
in bench/serve_load.py: a 5 ms window doubled the p50 latency of a lone request).
Requests whose feeds agree on every input's dtype and trailing shape (everything but axis 0)
are concatenated along axis 0, run once in a single worker thread (so the event loop keeps
serving while onnxruntime computes) and split back by their row counts. A request that is not
batchable (the caller says so: e.g. the model's leading dim is fixed) runs alone.

A batched run that fails is retried request by request, so one bad request cannot fail the
others it happened to share a batch with; each request then gets its own result or exception.
"""

from __future__ import annotations

import asyncio
import collections.abc
import concurrent.futures
import dataclasses
import logging
import time

import numpy as np

__all__ = ["MicroBatcher"]

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
RunFn = collections.abc.Callable[[Arrays], Arrays]


@dataclasses.dataclass
class _Pending:
    feeds: Arrays
    rows: int | None  # None: not batchable, runs alone
    future: asyncio.Future[Arrays]

    def signature(self) -> object:
        if self.rows is None:
            return id(self)
        return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in self.feeds.items()))


class MicroBatcher:
    """Collects concurrent requests into batches and runs them on one worker thread.

    Args:
        run: The model run, ``feeds -> outputs`` (called in the worker thread, one at a time).
        max_batch: The most rows one run takes (a single larger request still runs, alone).
        max_delay_ms: How long the first request of a batch waits for others.
        on_batch: Called with the number of rows of every run (for metrics).
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int = 8,
        max_delay_ms: float = 0.0,
        on_batch: collections.abc.Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_delay_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_delay_ms >= 0, got {max_batch}, {max_delay_ms}")
        self._run = run
        self._max_batch = max_batch
        self._max_delay = max_delay_ms / 1000.0
        self._on_batch = on_batch or (lambda rows: None)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="modelpress-run"
        )

    async def submit(self, feeds: Arrays, *, rows: int | None) -> Arrays:
        """Queue ``feeds`` and wait for its outputs.

        Args:
            feeds: The model's feeds for this request.
            rows: The request's size along axis 0 when it may be batched, else None.

        Raises:
            Exception: whatever the model run raised for this request.
        """
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._serve())
        assert self._queue is not None
        pending = _Pending(feeds, rows, asyncio.get_running_loop().create_future())
        await self._queue.put(pending)
        return await pending.future

    async def close(self) -> None:
        """Stop the worker and its thread (pending requests are cancelled)."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._collect(self._queue)
            for group in _groups(batch, self._max_batch):
                await self._run_group(group)

    async def _collect(self, queue: asyncio.Queue[_Pending]) -> list[_Pending]:
        first = await queue.get()
        batch, rows = [first], first.rows or self._max_batch
        deadline = time.monotonic() + self._max_delay
        while rows < self._max_batch:
            try:  # requests that queued up while the model ran join at once, delay or not
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            batch.append(item)
            rows += item.rows or self._max_batch
        return batch

    async def _run_group(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        live = [p for p in group if not p.future.done()]  # a client that went away was cancelled
        if not live:
            return
        if len(live) > 1:
            try:
                outputs = await loop.run_in_executor(self._executor, self._run_batch, live)
            except Exception:
                logger.debug("batched run of %d requests failed; retrying them one by one", len(live))
            else:
                for pending, result in zip(live, outputs, strict=True):
                    _resolve(pending.future, result)
                return
        for pending in live:
            try:
                result = await loop.run_in_executor(self._executor, self._run_one, pending)
            except Exception as e:
                _reject(pending.future, e)
            else:
                _resolve(pending.future, result)

    def _run_one(self, pending: _Pending) -> Arrays:
        self._on_batch(pending.rows or 1)  # a request that is not batchable counts as one row
        return self._run(pending.feeds)

    def _run_batch(self, group: list[_Pending]) -> list[Arrays]:
        counts = [p.rows or 0 for p in group]
        total = sum(counts)
        feeds = {name: np.concatenate([p.feeds[name] for p in group]) for name in group[0].feeds}
        self._on_batch(total)
        outputs = self._run(feeds)
        bad = [name for name, a in outputs.items() if a.ndim == 0 or a.shape[0] != total]
        if bad:  # an output not indexed by the batch row cannot be split back
            raise ValueError(f"outputs {bad} do not have {total} rows along axis 0")
        bounds = np.cumsum(counts)[:-1]
        split = {name: np.split(a, bounds) for name, a in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(group))]


def _groups(batch: list[_Pending], max_batch: int) -> list[list[_Pending]]:
    """Requests with the same signature, in arrival order, chunked to at most ``max_batch`` rows."""
    by_signature: dict[object, list[list[_Pending]]] = {}
    for pending in batch:
        chunks = by_signature.setdefault(pending.signature(), [[]])
        rows = sum(p.rows or 0 for p in chunks[-1])
        if chunks[-1] and (pending.rows is None or rows + pending.rows > max_batch):
            chunks.append([])
        chunks[-1].append(pending)
    return [chunk for chunks in by_signature.values() for chunk in chunks]


def _resolve(future: asyncio.Future[Arrays], result: Arrays) -> None:
    if not future.done():
        future.set_result(result)


def _reject(future: asyncio.Future[Arrays], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
