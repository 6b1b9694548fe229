"""One inference thread whose queue serves searches before background work (catalog writes' encodes).

Every model runs on this one thread (see runtime.load_engines). A search batch submitted while a
write's chunk is being encoded runs right after that chunk, ahead of the write's remaining chunks:
a bulk load never makes a shopper wait for more than one small chunk.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

URGENT, BACKGROUND = 0, 1


class PriorityExecutor(Executor):
    """`submit` (urgent) and `submit_background`, both run by one worker thread, urgent first (FIFO within)."""

    def __init__(self, thread_name: str = "inference"):
        self._heap: list[tuple[int, int, Future, Callable, tuple, dict]] = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        self._shutdown = False
        self._thread = threading.Thread(target=self._work, name=thread_name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        return self._put(URGENT, fn, args, kwargs)

    def submit_background(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        return self._put(BACKGROUND, fn, args, kwargs)

    def _put(self, priority: int, fn: Callable, args: tuple, kwargs: dict) -> Future:
        future: Future = Future()
        with self._cv:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            heapq.heappush(self._heap, (priority, next(self._order), future, fn, args, kwargs))
            self._cv.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._shutdown:
                    self._cv.wait()
                if not self._heap:
                    return
                _, _, future, fn, args, kwargs = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cv:
            self._shutdown = True
            if cancel_futures:
                for item in self._heap:
                    item[2].cancel()
                self._heap.clear()
            self._cv.notify_all()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()
