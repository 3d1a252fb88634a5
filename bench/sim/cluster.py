"""A cluster of simulated pods running the real ``Queue`` and ``Worker`` on one
virtual-time loop.

A pod is a set of tasks: everything created from its main task, tracked by the
loop's task factory. It has its own worker id, its own :class:`PodView` of the store
(its latency, its faults) and its own :class:`s3queue.sources.Sources` (wall clock
skewed by up to ``max_skew``, monotonic clock with its own origin, a random source
seeded from the run's seed and its name). A crash cancels every task of the pod and
leaves its view hanging (a request not yet landed never lands; its leases stay
behind until they expire), and a restart ``restart_after`` seconds later is a new
pod in its place with a new id. Producers are pods too, enqueuing at the target
rate with Poisson arrivals (on and off in the bursty scenario).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import traceback
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from bench.latency_store import prefix_of
from bench.sim.ledger import ClusterWatch, InvariantBroken, Ledger
from bench.sim.loop import VirtualLoop
from bench.sim.scenario import Scenario
from bench.sim.store import EPOCH, PodView, SimStore, Tally
from s3queue import Polling, Queue, Worker, sources
from s3queue.core import layout
from s3queue.core.cursor import Lease, decode_cursor
from s3queue.errors import QueueError
from s3queue.runtime.worker import WorkerEvent
from s3queue.storage import RetryingStorage

QUEUE = "sim"
#: Producer enqueues in flight per producer pod at most (group commit batches them).
IN_FLIGHT = 256

_POD: contextvars.ContextVar[Pod | None] = contextvars.ContextVar("sim_pod", default=None)


@dataclass(eq=False)
class Pod:
    name: str
    view: PodView
    sources: sources.Sources
    alive: bool = True
    #: The pod's queue once its worker runs (what it owns, as the worker set it).
    queue: Queue | None = None
    #: A dict, not a set: cancelled in the order they were created, on every run.
    tasks: dict[asyncio.Task[Any], None] = field(default_factory=dict)


@dataclass
class Outcome:
    """What a run saw; :mod:`bench.sim.report` turns it into figures."""

    scenario: Scenario
    trace: str
    requests: int
    tally: Tally
    ledger: Ledger
    watch: ClusterWatch
    window: float
    enqueued: int
    enqueue_failures: int
    log_levels: Counter[str]
    log_samples: list[str]
    broken: InvariantBroken | None
    window_lines: list[str]
    #: When the load started (simulated seconds), for the timeline.
    start: float = 0.0
    #: The reshard (seconds after the start), and when every running worker knew
    #: the new shard count (None: never, or no reshard).
    resharded_at: float | None = None
    known_at: float | None = None


class _LogCounter(logging.Handler):
    """Counts what the package logs (warnings are errors that got past the retries)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.levels: Counter[str] = Counter()
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.levels[record.levelname] += 1
        if len(self.samples) < 5:
            self.samples.append(record.getMessage()[:600])


class Simulation:
    """One run of one scenario; :func:`simulate` is the entry point."""

    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.loop = asyncio.get_running_loop()
        self.store = SimStore(
            self.loop.time, limit_scale=scenario.limit_scale, spike=scenario.spike
        )
        self.ledger = Ledger(now=self.loop.time, store_time=lambda: EPOCH + self.loop.time())
        self.watch = ClusterWatch(now=self.loop.time)
        self.rng = random.Random(f"{scenario.seed}:cluster")
        self.pods: list[Pod] = []
        self.enqueued = self.enqueue_failures = 0
        #: Producers still running (their last enqueues may be in flight).
        self.producing = 0
        #: When the load starts (after the queue is made and any backlog written).
        self.start = 0.0
        self._restarts: Counter[int] = Counter()
        #: See :class:`Outcome`.
        self.resharded_at: float | None = None
        self.known_at: float | None = None
        self.loop.set_task_factory(_task_factory)

    # --- pods --------------------------------------------------------------------------------

    def _pod(self, name: str, *, faults: bool = True) -> Pod:
        s, offset = self.s, self.rng.uniform(-self.s.max_skew, self.s.max_skew)
        origin = self.rng.uniform(1e3, 1e6)
        view = PodView(self.store, name, random.Random(f"{s.seed}:{name}:net"), s.latency)
        if faults:
            view.faults = s.faults
        own = sources.Sources(
            wall=lambda: EPOCH + self.loop.time() + offset,
            monotonic=lambda: origin + self.loop.time(),
            rng=random.Random(f"{s.seed}:{name}"),
        )
        pod = Pod(name, view, own)
        self.pods.append(pod)
        return pod

    def _start(self, pod: Pod, main: Coroutine[Any, Any, None]) -> None:
        context = contextvars.copy_context()
        context.run(_POD.set, pod)
        self.loop.create_task(_within(pod, main), context=context)

    def crash(self, pod: Pod) -> None:
        if pod.alive and pod.queue is not None and not self.store.closing:
            self.watch.crashed(pod.queue.owned)
        pod.alive = False
        pod.view.dead = True
        for task in list(pod.tasks):
            task.cancel()

    async def _open(self, pod: Pod) -> Queue:
        return await Queue.open(RetryingStorage(pod.view), QUEUE, shards=self.s.shards)

    # --- workers -------------------------------------------------------------------------------

    def start_worker(self, index: int, delay: float) -> None:
        pod = self._pod(self._worker_name(index))
        self._start(pod, self._worker_main(pod, index, delay))

    def _worker_name(self, index: int) -> str:
        """``w7``, then ``w7.1``, ``w7.2``... for each restart of pod 7."""
        generation = self._restarts[index]
        return f"w{index}" + (f".{generation}" if generation else "")

    async def _worker_main(self, pod: Pod, index: int, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            queue = await self._open(pod)
        except QueueError:  # could not start through the faults: the pod restarts
            self._restart_later(pod, index)
            return
        worker = Worker(
            queue,
            self._handler(pod),
            concurrency=self.s.slots,
            polling=Polling(
                poll_interval=self.s.poll_interval,
                sweep_interval=self.s.sweep_interval,
                max_poll_interval=self.s.max_poll_interval,
                heartbeat_interval=self.s.heartbeat_interval,
            ),
            worker_id=pod.name,
        )
        pod.queue = queue
        worker.on("coordinator_promoted", lambda e: self.watch.promoted(e.worker_id, e.epoch or 0))
        for name in ("completed", "retry", "dead", "recovered"):
            worker.on(name, lambda event, pod=pod: self._settled(pod, event))  # type: ignore[misc]
        try:
            await worker.run()
        except QueueError:
            self._restart_later(pod, index)
        except Exception as error:  # a bug of the product, not a fault we injected
            self._died(pod, error)

    def _died(self, pod: Pod, error: Exception) -> None:
        if self.ledger.broken is None:
            where = "".join(traceback.format_exception(error)[-12:])
            what = f"{pod.name} died of an error no fault explains: {error!r}\n{where}"
            self.ledger.broken = InvariantBroken(what, "", self.loop.time())

    def _restart_later(self, pod: Pod, index: int) -> None:
        self.crash(pod)
        self._restarts[index] += 1
        self.loop.call_later(self.s.restart_after, self.start_worker, index, 0.0)

    def _handler(self, pod: Pod) -> Any:
        ledger, seconds, failure = self.ledger, self.s.handler_ms / 1000, self.s.handler_failure

        async def handle(payload: Any, ctx: Any) -> None:
            if pod.alive:
                stored = await self._stored_lease(ctx.message_id)
                ledger.started(pod.name, ctx.message_id, ctx.lease_token, stored)
            await asyncio.sleep(seconds)
            if failure and sources.chance() < failure:
                raise RuntimeError("simulated handler failure")

        return handle

    async def _stored_lease(self, message_id: str) -> Lease | None:
        """The lease the store's cursor holds for the message now, read from the
        bucket itself: no request, no latency, no time passes."""
        shard = layout.parse_message_id(message_id).shard
        key = layout.cursor_key(QUEUE, shard)
        found = await self.store.memory.get(key)
        flight = None if found is None else decode_cursor(found.data, key).flights.get(message_id)
        return None if flight is None else flight.lease

    def _settled(self, pod: Pod, event: WorkerEvent) -> None:
        if not pod.alive or event.message_id is None:
            return
        if event.name == "recovered":
            if event.dead:
                self.ledger.settled(pod.name, event.message_id, "dead")
            return
        self.ledger.settled(pod.name, event.message_id, event.name)

    # --- producers -----------------------------------------------------------------------------

    def start_producer(self, index: int) -> None:
        pod = self._pod(f"p{index}")
        self._start(pod, self._producer_main(pod))

    async def _producer_main(self, pod: Pod) -> None:
        s = self.s
        try:
            queue = await self._open(pod)
        except Exception as error:  # faults cannot outlast the retries of one open
            self._died(pod, error)
            return
        rate = s.producer_rate
        gate = asyncio.Semaphore(IN_FLIGHT)
        pending: set[asyncio.Task[None]] = set()
        self.producing += 1
        try:
            while self.loop.time() < self.start + s.seconds:
                await asyncio.sleep(sources.current().rng.expovariate(rate))  # type: ignore[union-attr]
                if not s.producing(self.loop.time()):
                    continue
                await gate.acquire()
                task = asyncio.create_task(self._enqueue(queue, gate))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
        finally:
            self.producing -= 1

    async def _enqueue(self, queue: Queue, gate: asyncio.Semaphore) -> None:
        called = self.loop.time()
        try:
            message_id = await queue.enqueue({"at": called})
        except QueueError:
            self.enqueue_failures += 1  # not acknowledged: nothing is promised
            return
        finally:
            gate.release()
        self.enqueued += 1
        self.ledger.enqueued(message_id, called)

    async def preload(self) -> None:
        """The backlog, enqueued before any worker starts (no faults)."""
        pod = self._pod("loader", faults=False)
        with sources.using(pod.sources):
            queue = await self._open(pod)
            gate = asyncio.Semaphore(8)

            async def batch(size: int) -> None:
                async with gate:
                    called = self.loop.time()
                    for message_id in await queue.enqueue_many([{"n": n} for n in range(size)]):
                        self.ledger.enqueued(message_id, called)
                        self.enqueued += 1

            sizes = [min(100, self.s.backlog - start) for start in range(0, self.s.backlog, 100)]
            await asyncio.gather(*(batch(n) for n in sizes))
            await queue.close()

    # --- the run -------------------------------------------------------------------------------

    async def setup(self) -> None:
        pod = self._pod("setup", faults=False)
        with sources.using(pod.sources):
            await (await self._open(pod)).close()
        if self.s.backlog:
            await self.preload()

    def schedule_crashes(self) -> None:
        s = self.s
        victims = self.rng.sample(range(s.pods), round(s.pods * s.crash_fraction))
        for index in victims:
            at = self.start + self.rng.uniform(s.warmup, s.seconds)
            self.loop.call_at(at, self._crash_worker, index)

    def schedule_kills(self) -> None:
        for after in self.s.kill_coordinator:
            self.loop.call_at(self.start + after, self._kill_coordinator)

    def _kill_coordinator(self) -> None:
        """Kill the pod that was promoted last, if it still runs."""
        for _, name, _ in reversed(self.watch.promotions):
            pod = next((p for p in reversed(self.pods) if p.name == name), None)
            if pod is not None and pod.alive:
                self.watch.kills.append(self.loop.time())
                self._crash_worker(int(name[1:].split(".")[0]))
            return

    def schedule_reshard(self) -> None:
        if self.s.reshard is not None:
            after, shards = self.s.reshard
            self.loop.call_at(self.start + after, self._start_reshard, shards)

    def _start_reshard(self, shards: int) -> None:
        """``s3queue reshard`` from a pod of its own (faults and all)."""
        pod = self._pod("admin")

        async def main() -> None:
            queue = await self._open(pod)
            await queue.reshard(shards)
            self.resharded_at = self.loop.time() - self.start
            await queue.close()

        self._start(pod, main())

    def check_reshard(self) -> None:
        """Note when every running worker first claims from the new shards."""
        if self.resharded_at is None or self.known_at is not None or self.s.reshard is None:
            return
        shards = self.s.reshard[1]
        running = [p.queue for p in self.pods if p.alive and p.queue is not None]
        if all(q.settings.shards == shards for q in running):
            self.known_at = self.loop.time() - self.start

    def owned_now(self) -> set[int]:
        return {
            k for p in self.pods if p.alive and p.queue and p.queue.owned for k in p.queue.owned
        }

    def _crash_worker(self, index: int) -> None:
        name = self._worker_name(index)
        pod = next((p for p in reversed(self.pods) if p.name == name), None)
        if pod is not None and pod.alive:  # not between a failed start and its restart
            self.ledger.crashes += 1
            self._restart_later(pod, index)

    async def verify_unfinished(self) -> None:
        """Messages with no outcome heard: ask the queue itself (an ack that landed
        while its pod was being killed is done, though nobody heard it)."""
        pod = self._pod("auditor", faults=False)
        with sources.using(pod.sources):
            queue = await self._open(pod)
            for message_id in self.ledger.unfinished():
                info = await queue.get(message_id)
                status = "missing" if info is None else info.status
                if status in ("completed", "dead"):
                    self.ledger.messages[message_id].outcome = status
                elif self.ledger.broken is None:
                    self.ledger.broken = InvariantBroken(
                        f"an acknowledged enqueue ended {status}, not completed or dead",
                        message_id,
                        self.loop.time(),
                    )
            await queue.close()

    def window_lines(self) -> list[str]:
        """The shortest stretch of the request log that shows a broken invariant: the
        requests on the message's shard since its first start (or enqueue), a
        second at least (a message started before its producer heard it was
        written is known from that start only)."""
        broken = self.ledger.broken
        if broken is None:
            return []
        msg = self.ledger.messages.get(broken.message_id)
        since = 0.0 if msg is None else msg.enqueued
        if msg is not None and msg.first_start is not None and msg.first_start < broken.at:
            since = msg.first_start  # not the start that broke it: from the first one
        since = min(since, broken.at - 1.0)
        shard = broken.message_id.split("-")[0]
        prefix = prefix_of(f"{QUEUE}/shards/{int(shard):04d}/x") if shard.isdigit() else ""
        lines = [
            line
            for line in self.store.log
            if since <= float(line.split(" ", 1)[0]) <= broken.at
            and (not prefix or f" {prefix}" in line)
        ]
        return lines[-80:]


def _task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Task[Any]:
    task = asyncio.Task(coro, loop=loop, **options)
    context = options.get("context")
    pod = _POD.get() if context is None else context.get(_POD)
    if pod is not None:
        pod.tasks[task] = None
        task.add_done_callback(lambda done: pod.tasks.pop(done, None))
    return task


async def _within(pod: Pod, main: Coroutine[Any, Any, None]) -> None:
    with sources.using(pod.sources):
        await main


class _Stop(Exception):
    """An invariant broke: the run ends at once."""


async def _until(sim: Simulation, at: float) -> None:
    while sim.loop.time() < at:
        if sim.watch.broken is not None and sim.ledger.broken is None:
            sim.ledger.broken = InvariantBroken(sim.watch.broken, "", sim.loop.time())
        if sim.ledger.broken is not None:
            raise _Stop
        if sim.watch.orphans:
            sim.watch.tick(sim.owned_now())
        sim.check_reshard()
        await asyncio.sleep(min(1.0, at - sim.loop.time()))


async def _load(sim: Simulation) -> tuple[Tally, float]:
    """Start the pods, apply the load; the tally of the measured window, and its
    length in seconds."""
    s = sim.s
    await sim.setup()
    start = sim.start = sim.loop.time()
    for index in range(s.pods):
        sim.start_worker(index, sim.rng.uniform(0, s.stagger))
    for index in range(s.producers if s.rate else 0):
        sim.start_producer(index)
    sim.schedule_crashes()
    sim.schedule_kills()
    sim.schedule_reshard()
    await _until(sim, start + s.warmup)
    tally = sim.store.tally = Tally()
    sim.ledger.measuring = True
    began = sim.loop.time()
    if s.rate or not s.backlog:
        await _until(sim, start + s.seconds)
        sim.store.tally = None
        sim.ledger.measuring = False
    await _drain(sim, start + s.seconds + s.drain_limit)
    end = sim.ledger.last_outcome if s.backlog and not s.rate else start + s.seconds
    sim.store.tally = None
    return tally, max(1e-9, end - began)


async def _drain(sim: Simulation, limit: float) -> None:
    # Producers too: an enqueue in flight when the load ends (retrying through
    # faults) is acknowledged later, and must then be drained like the others.
    while (sim.ledger.unfinished() or sim.producing) and sim.loop.time() < limit:
        await _until(sim, sim.loop.time() + 1.0)


async def _run(s: Scenario) -> Outcome:
    sim = Simulation(s)
    tally, window, broken = Tally(), 1.0, None
    try:
        tally, window = await _load(sim)
        await sim.verify_unfinished()
    except _Stop:
        pass
    broken = sim.ledger.broken
    sim.store.closing = True
    for pod in sim.pods:
        sim.crash(pod)
    return Outcome(
        scenario=s,
        trace=sim.store.trace,
        requests=sim.store.requests,
        tally=tally,
        ledger=sim.ledger,
        watch=sim.watch,
        window=window,
        enqueued=sim.enqueued,
        enqueue_failures=sim.enqueue_failures,
        log_levels=Counter(),
        log_samples=[],
        broken=broken,
        window_lines=sim.window_lines(),
        start=sim.start,
        resharded_at=sim.resharded_at,
        known_at=sim.known_at,
    )


def simulate(s: Scenario) -> Outcome:
    """Run ``s`` on a fresh virtual-time loop; the same scenario (seed included)
    gives the same trace."""
    counter = _LogCounter()
    logger = logging.getLogger("s3queue")
    logger.addHandler(counter)
    propagate, logger.propagate = logger.propagate, False
    try:
        with asyncio.Runner(loop_factory=VirtualLoop) as runner:
            outcome = runner.run(_run(s))
    finally:
        logger.removeHandler(counter)
        logger.propagate = propagate
    outcome.log_levels, outcome.log_samples = counter.levels, counter.samples
    return outcome
