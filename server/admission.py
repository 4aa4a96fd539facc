"""Admission control: at most ``max_in_flight`` chat requests at once, a bounded FIFO queue behind
them, and a budget of request-body bytes held in memory.

A request asks for one slot and ``weight`` bytes (its declared ``Content-Length``, or the body
limit when it declares none) BEFORE its body is read, so a burst of large uploads waits in the
kernel's socket buffers (TCP flow control holds the senders back) instead of in the front end's
memory. When neither a slot nor room in the queue is free the request is refused at once
(:class:`Overloaded`, HTTP 429 with ``Retry-After``); a queued request that waits longer than
``queue_timeout`` is refused the same way. The queue is FIFO: a large upload at its head is not
starved by small requests behind it. One request is always admitted when nothing is in flight,
whatever its size (it is within the body limit), so the budget cannot deadlock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass


class Overloaded(Exception):
    """No capacity: ``reason`` is ``queue_full`` or ``queue_timeout``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(eq=False)
class Ticket:
    weight: int
    admission: Admission
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._release(self)


class Admission:
    def __init__(self, *, max_in_flight: int, max_queued: int, queue_timeout: float,
                 max_bytes: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.queue_timeout = queue_timeout
        self.max_bytes = max_bytes
        self.in_flight = 0
        self.bytes = 0
        self._queue: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _fits(self, weight: int) -> bool:
        if self.in_flight >= self.max_in_flight:
            return False
        return self.in_flight == 0 or self.bytes + weight <= self.max_bytes

    async def acquire(self, weight: int) -> Ticket:
        if not self._queue and self._fits(weight):
            return self._admit(weight)
        if len(self._queue) >= self.max_queued:
            raise Overloaded("queue_full", f"the server is busy ({self.in_flight} requests in "
                             f"flight, {len(self._queue)} waiting); retry later")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (weight, future)
        self._queue.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.queue_timeout)
        except asyncio.TimeoutError:
            if future.done() and not future.cancelled():  # admitted at the last moment
                return Ticket(weight, self)
            self._remove(entry)
            raise Overloaded("queue_timeout", f"the server is busy: no capacity within "
                             f"{self.queue_timeout:g} s; retry later") from None
        except BaseException:  # cancelled (client gone): give the slot back if it was granted
            if future.done() and not future.cancelled():
                Ticket(weight, self).release()
            else:
                self._remove(entry)
            raise
        return Ticket(weight, self)

    def _admit(self, weight: int) -> Ticket:
        self.in_flight += 1
        self.bytes += weight
        return Ticket(weight, self)

    def _remove(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(entry)
        if not entry[1].done():
            entry[1].cancel()
        self._wake()

    def _release(self, ticket: Ticket) -> None:
        self.in_flight -= 1
        self.bytes -= ticket.weight
        self._wake()

    def _wake(self) -> None:
        while self._queue:
            weight, future = self._queue[0]
            if future.done():
                self._queue.popleft()
                continue
            if not self._fits(weight):
                return
            self._queue.popleft()
            self.in_flight += 1
            self.bytes += weight
            future.set_result(None)
