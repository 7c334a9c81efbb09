"""The micro-batcher on a plain function: coalescing, limits, error routing and shutdown."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from api.serving import Batcher, BatcherClosed


class Recorder:
    """x → 2x, recording batch sizes and the thread it runs on; fails on negative rows."""

    def __init__(self, delay: float = 0.02) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if (batch < 0).any():
            raise ValueError("negative input")
        return batch * 2


def run(coro_fn, fn, **kwargs):
    """Start a batcher on a fresh loop, run `coro_fn(batcher)`, close it."""

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="engine") as pool:
            b = Batcher(fn, pool, **kwargs)
            b.start()
            try:
                return await coro_fn(b)
            finally:
                await b.close()

    return asyncio.run(main())


def rows(*values: float) -> np.ndarray:
    return np.asarray(values, np.float32)[:, None]


def test_concurrent_requests_share_batches_off_the_loop():
    fn = Recorder()

    async def go(b):
        loop_thread = threading.current_thread().name
        outs = await asyncio.gather(*(b.submit(rows(i)) for i in range(16)))
        return outs, loop_thread

    outs, loop_thread = run(go, fn, max_batch=8, max_wait_ms=20)
    for i, out in enumerate(outs):  # every caller gets its own rows back
        np.testing.assert_array_equal(out, rows(2 * i))
    assert sum(fn.sizes) == 16 and len(fn.sizes) <= 4 and max(fn.sizes) == 8
    assert fn.threads == {"engine_0"} and loop_thread not in fn.threads


def test_a_large_request_is_split_into_max_batch_chunks():
    fn = Recorder(delay=0)
    out = run(lambda b: b.submit(rows(*range(10))), fn, max_batch=4)
    np.testing.assert_array_equal(out, rows(*range(0, 20, 2)))
    assert fn.sizes == [4, 4, 2]


def test_disabled_batching_runs_each_request_alone():
    fn = Recorder()

    async def go(b):
        return await asyncio.gather(*(b.submit(rows(i, i)) for i in range(5)))

    outs = run(go, fn, max_batch=8, max_wait_ms=50, enabled=False)
    assert fn.sizes == [2] * 5
    np.testing.assert_array_equal(outs[3], rows(6, 6))


def test_an_error_reaches_only_the_caller_whose_rows_caused_it():
    fn = Recorder()

    async def go(b):
        return await asyncio.gather(
            *(b.submit(rows(-1.0 if i == 2 else i)) for i in range(6)), return_exceptions=True
        )

    outs = run(go, fn, max_batch=8, max_wait_ms=20)
    assert isinstance(outs[2], ValueError)
    for i in (0, 1, 3, 4, 5):
        np.testing.assert_array_equal(outs[i], rows(2 * i))
    assert max(fn.sizes) > 1  # they were batched together, then retried one by one


def test_close_finishes_queued_work_then_refuses_new():
    fn = Recorder()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(fn, pool, max_batch=2, max_wait_ms=1)
            b.start()
            pending = [asyncio.ensure_future(b.submit(rows(i))) for i in range(5)]
            await asyncio.sleep(0)  # queued, not yet run
            await b.close()  # returns once the queue is drained
            results = await asyncio.wait_for(asyncio.gather(*pending), 1.0)
            with pytest.raises(BatcherClosed):
                await b.submit(rows(1))
            return results

    results = asyncio.run(main())
    np.testing.assert_array_equal(np.concatenate(results), rows(0, 2, 4, 6, 8))
    assert sum(fn.sizes) == 5


def test_not_started_refuses_and_a_cancelled_caller_does_not_hurt_others():
    with ThreadPoolExecutor(1) as pool:
        b = Batcher(Recorder(), pool)
        with pytest.raises(BatcherClosed):
            asyncio.run(b.submit(rows(1)))

    async def go(b):
        doomed = asyncio.ensure_future(b.submit(rows(1)))
        kept = asyncio.ensure_future(b.submit(rows(2)))
        await asyncio.sleep(0)
        doomed.cancel()
        return await kept, b.depth

    out, depth = run(go, Recorder(), max_batch=4, max_wait_ms=10)
    np.testing.assert_array_equal(out, rows(4))
    assert depth == 0
