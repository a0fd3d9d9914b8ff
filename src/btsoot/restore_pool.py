"""The restore's worker pool: files handed to threads in batches, one folder per batch.

Copying and hashing run on worker threads; everything else (the walk, the
result, folder descriptors) stays on the main thread. Jobs are gathered per
folder and handed over in batches (fewer, larger hand-offs); at most `ahead`
batches per worker are in flight, and their results come back to the main
thread in the order the batches were handed over.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

K = TypeVar("K")  # what a batch belongs to (a folder)
J = TypeVar("J")  # one job
R = TypeVar("R")  # a batch's result

BATCH_FILES = 64  # files handed to a worker at once (fewer, larger hand-offs)
BATCH_BYTES = 64 << 20


class BatchPool(Generic[K, J, R]):
    """A thread pool fed in batches (a context manager: the threads end with it).

    `start(key, jobs)` runs on the main thread when a batch is handed over: it
    returns the work to run on a worker, or None when nothing is left to run.
    `settle(key, result, last)` runs on the main thread with each batch's
    result; `last` says no other batch of that key is in flight.
    """

    def __init__(self, workers: int, start: Callable[[K, list[J]], Callable[[], R] | None],
                 settle: Callable[[K, R, bool], None], *, ahead: int = 4) -> None:
        self.workers = workers
        self._start = start
        self._settle = settle
        self._limit = workers * ahead
        self._key: K | None = None
        self._batch: list[J] = []
        self._bytes = 0
        self._inflight: deque[tuple[Future[R], K]] = deque()
        self._pending: dict[K, int] = {}
        self._ex: ThreadPoolExecutor | None = None

    def __enter__(self) -> BatchPool[K, J, R]:
        self._ex = ThreadPoolExecutor(max_workers=self.workers,
                                      thread_name_prefix="btsoot-restore")
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        assert self._ex is not None
        # Stopped by an error: what has not started is dropped, what runs is waited for.
        self._ex.shutdown(wait=True, cancel_futures=exc_type is not None)
        self._ex = None

    def add(self, key: K, job: J, size: int) -> None:
        """Queue job for key's batch; a batch goes when key changes or it is full."""
        if self._key is not key and self._batch:
            self.flush()
        self._key = key
        self._batch.append(job)
        self._bytes += size
        if len(self._batch) >= BATCH_FILES or self._bytes >= BATCH_BYTES:
            self.flush()

    def flush_for(self, key: K) -> None:
        """Hand over key's batch, if one is being gathered."""
        if self._batch and self._key is key:
            self.flush()

    def flush(self) -> None:
        key, batch = self._key, self._batch
        assert key is not None and self._ex is not None
        self._key, self._batch, self._bytes = None, [], 0
        work = self._start(key, batch)
        if work is None:
            return
        self.drain(self._limit)
        self._pending[key] = self._pending.get(key, 0) + 1
        self._inflight.append((self._ex.submit(work), key))

    def busy(self, key: K) -> bool:
        """Is a batch of key in flight?"""
        return key in self._pending

    def drain(self, limit: int = 0) -> None:
        """Settle the oldest batches until at most limit are in flight."""
        while len(self._inflight) > limit:
            fut, key = self._inflight.popleft()
            result = fut.result()
            left = self._pending[key] - 1
            if left:
                self._pending[key] = left
            else:
                del self._pending[key]
            self._settle(key, result, not left)
