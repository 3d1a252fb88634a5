"""What a simulation run does: the cluster, the load, the store and the faults.

The named scenarios of docs/SIMULATION.md are :data:`SCENARIOS`; the command line
changes their fields (``--pods``, ``--shards``, ``--seconds``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bench.sim.store import Faults, Latency, Spike


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str = "steady"
    pods: int = 10
    slots: int = 8
    shards: int = 16
    #: Simulated seconds of load; the run then drains (at most ``drain_limit`` more).
    seconds: float = 60.0
    #: Seconds before measuring starts (pods starting, clocks sampled).
    warmup: float = 10.0
    #: Target enqueues per second over all producers (0: no producers).
    rate: float = 1000.0
    producers: int = 4
    #: Bursty load: ``(on, off)`` seconds; producers enqueue only while on, at
    #: ``rate * (on + off) / on``, so the mean rate stays ``rate``.
    burst: tuple[float, float] | None = None
    #: Messages enqueued before the workers start (a drain, as bench simulate does).
    backlog: int = 0
    handler_ms: float = 10.0
    #: The chance a handler raises (retried, dead after the queue's max attempts).
    handler_failure: float = 0.0
    latency: Latency = field(default_factory=Latency)
    faults: Faults = field(default_factory=Faults)
    limit_scale: float = 1.0
    #: The share of worker pods crashed at a random time of the load, each
    #: restarted ``restart_after`` seconds later as a new pod.
    crash_fraction: float = 0.0
    restart_after: float = 10.0
    #: Each pod's wall clock is off the store's by a uniform draw in +-max_skew.
    max_skew: float = 0.0
    spike: Spike | None = None
    #: Worker pods start over this many seconds (a rollout).
    stagger: float = 5.0
    poll_interval: float = 1.0
    max_poll_interval: float = 10.0
    heartbeat_interval: float = 90.0
    sweep_interval: float | None = 60.0
    #: Seconds after the start at which whichever pod coordinates is killed.
    kill_coordinator: tuple[float, ...] = ()
    #: ``(seconds after the start, shards)``: ``s3queue reshard`` then, under load.
    reshard: tuple[float, int] | None = None
    drain_limit: float = 300.0
    seed: int = 1

    def producing(self, now: float) -> bool:
        if self.burst is None:
            return True
        on, off = self.burst
        return now % (on + off) < on

    @property
    def producer_rate(self) -> float:
        """Arrivals per second per producer while producing."""
        if self.burst is None:
            return self.rate / self.producers
        on, off = self.burst
        return self.rate * (on + off) / on / self.producers


FAULTS = Faults(error=0.01, timeout=0.002, ambiguous=0.01)

SCENARIOS: dict[str, Scenario] = {
    "steady": Scenario(name="steady"),
    "bursty": Scenario(name="bursty", burst=(10.0, 20.0)),
    "idle": Scenario(name="idle", rate=0.0, seconds=600.0, warmup=60.0),
    "crash": Scenario(name="crash", crash_fraction=0.1, max_skew=5.0),
    "ambiguous": Scenario(name="ambiguous", faults=Faults(ambiguous=0.05)),
    "spike": Scenario(name="spike", spike=Spike(30.0, 40.0, 10.0)),
    #: Every fault at once: what CI runs on a few seeds, and the 200-seed bar.
    "faults": Scenario(
        name="faults",
        faults=FAULTS,
        crash_fraction=0.1,
        max_skew=5.0,
        handler_failure=0.02,
        restart_after=5.0,
    ),
    #: 20 pods, the coordinator killed three times, with faults and skewed clocks.
    "failover": Scenario(
        name="failover",
        pods=20,
        rate=50.0,
        seconds=130.0,
        warmup=5.0,
        heartbeat_interval=10.0,
        kill_coordinator=(20.0, 60.0, 100.0),
        faults=FAULTS,
        max_skew=1.0,
    ),
    #: 16 pods on 16 shards at 1,000 msg/s, grown to 64 shards 40 s in.
    "reshard": Scenario(
        name="reshard",
        pods=16,
        rate=1000.0,
        seconds=120.0,
        warmup=10.0,
        heartbeat_interval=10.0,
        reshard=(40.0, 64),
        drain_limit=120.0,
    ),
    #: bench simulate's setting: a 6,000-message backlog drained at 25 ms per request.
    "backlog": Scenario(
        name="backlog",
        pods=4,
        shards=4,
        rate=0.0,
        backlog=6000,
        latency=Latency(low=0.020, high=0.030, tail=0.0),
        poll_interval=0.2,
        sweep_interval=None,
        stagger=0.0,
        warmup=0.0,
    ),
}


def scenario(name: str, **changes: object) -> Scenario:
    return replace(SCENARIOS[name], **changes)  # type: ignore[arg-type]
