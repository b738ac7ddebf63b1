"""Run a frame stream on its own thread, a bounded number of frames ahead of its consumer (the page)."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator

from llb.inference.session import FrameResult

_END = object()


def ahead(make: Callable[[], Iterator[FrameResult]], stop: threading.Event) -> Iterator[tuple[FrameResult, float]]:
    """Iterate a session's stream on its own thread, yielding (result, seconds it took).

    The engine runs up to two frames ahead of the page: while Gradio encodes and sends one preview, the next
    frame is being segmented. `stop` (or closing this iterator) ends the stream after the current frame.
    """
    out: queue.Queue = queue.Queue(maxsize=2)
    halt = threading.Event()

    def put(item: object) -> None:
        while not halt.is_set():
            with contextlib.suppress(queue.Full):
                out.put(item, timeout=0.1)
                return

    def work() -> None:
        try:
            stream = make()
            while not (stop.is_set() or halt.is_set()):
                tick = time.perf_counter()
                res = next(stream, None)
                if res is None:
                    break
                put((res, time.perf_counter() - tick))
            stream.close()
            put(_END)
        except Exception as err:
            put(err)

    threading.Thread(target=work, name="llb-propagate", daemon=True).start()
    try:
        while (item := out.get()) is not _END:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        halt.set()
