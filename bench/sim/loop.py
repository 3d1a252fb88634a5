"""An asyncio event loop on virtual time: when every task waits, the clock jumps to
the next timer instead of sleeping, so simulated minutes take what the callbacks
cost, not what the clock says.

It is the standard selector loop with two changes: ``time()`` reads a counter, and
the selector's ``select(timeout)`` polls the real file descriptors without blocking
(the loop's self-pipe; the simulation has no sockets) and then moves the counter on
by ``timeout``, the distance to the earliest timer that the loop computed. The loop
then runs that timer as it would after a real sleep. Timers fire in the order the
loop's heap gives them, which depends only on what was scheduled: the same program
gives the same interleaving on every run.

A loop with nothing ready and no timer would wait for an outside event forever; the
simulation has none, so that is a deadlock and is raised as one.

Every turn of the loop also moves the clock on by :data:`TURN` (a nanosecond), as
real turns take real time. Without it a loop can spin forever at one instant: asyncio
runs a timer that is due within its clock resolution (about a nanosecond) at once,
without waiting, so code that waits for a deadline ``d`` seconds away with ``d``
below the resolution (a pod's monotonic clock has a large origin, so its readings
step by 1e-10 s) finds the deadline still ahead, waits again, and, with a new task
ready every time, never lets the selector move the clock. One seed of the fault
scenario did exactly this in a committer's linger loop.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

#: Seconds every turn of the loop takes.
TURN = 1e-9


class Deadlock(RuntimeError):
    """Every task waits for something no timer will bring."""


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self) -> None:
        self._real = selectors.DefaultSelector()
        self.now = 0.0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        self.now += TURN
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise Deadlock("every task is waiting and no timer is set")
        self.now += max(0.0, timeout - TURN)
        return []

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualLoop(asyncio.SelectorEventLoop):
    """``asyncio.SelectorEventLoop`` whose clock starts at 0 and moves only when
    every task waits (to the next timer)."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now
