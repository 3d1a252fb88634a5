"""Prometheus metrics and health checks of a Worker, served over HTTP.

``WorkerMonitor(worker)`` keeps its metrics in a registry of its own (two workers in
one process never collide) and ``await monitor.serve(host, port)`` answers:

- ``GET /metrics``: the Prometheus text format;
- ``GET /livez``: 200 while the event loop answers at all (a liveness probe);
- ``GET /cluster``: the queue's cluster snapshot as JSON (live workers, the
  coordinator, the backlog): what the KEDA metrics-api scaler reads;
- ``GET /healthz`` (also ``/readyz``): 200 with a JSON body while the worker runs and
  its claims reach storage; 503 with the reason when it is stopping, has stopped, or
  every claim has failed for longer than ``unhealthy_after`` seconds.

The server is a few lines of asyncio rather than a thread: it runs on the worker's
own loop, so a loop blocked by a handler shows up as a probe timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from s3queue import limits, sources
from s3queue.ops import webserver, workers_view
from s3queue.runtime.worker import EventName, Worker, WorkerEvent

#: Job durations from a millisecond to ten minutes.
#: The worker events that end an attempt, each a label of the finished-jobs metrics.
OUTCOMES: tuple[EventName, ...] = ("completed", "retry", "dead", "cancelled")
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600)


class WorkerMonitor:
    """Metrics and health of one :class:`Worker`."""

    def __init__(
        self,
        worker: Worker,
        *,
        unhealthy_after: float | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.worker = worker
        unhealthy_after = limits.UNHEALTHY_AFTER.optional(unhealthy_after, "unhealthy_after")
        self.unhealthy_after = (
            unhealthy_after
            if unhealthy_after is not None
            else max(30.0, 10 * worker.polling.poll_interval)
        )
        self.registry = registry or CollectorRegistry()
        queue = worker.queue.name

        def counter(name: str, doc: str) -> Counter:
            # The labelled child exists from the start, so the series shows 0.
            return Counter(name, doc, ["queue"], registry=self.registry).labels(queue)

        def by_outcome(metric: Counter | Histogram) -> dict[str, Any]:
            return {o: metric.labels(queue, o) for o in OUTCOMES}

        self.claimed = counter("s3queue_jobs_claimed", "Leases claimed by this worker.")
        self.leases_lost = counter(
            "s3queue_leases_lost",
            "Leases this worker lost before it could ack (another worker may run the job).",
        )
        self.recovered = counter(
            "s3queue_leases_recovered",
            "Expired leases of other workers that this worker's commits recovered.",
        )
        self.finished = by_outcome(
            Counter(
                "s3queue_jobs_finished",
                "Attempts that ended, by outcome (completed, retry, dead, cancelled).",
                ["queue", "outcome"],
                registry=self.registry,
            )
        )
        self.duration = by_outcome(
            Histogram(
                "s3queue_job_duration_seconds",
                "Handler run time of finished attempts, by outcome.",
                ["queue", "outcome"],
                buckets=DURATION_BUCKETS,
                registry=self.registry,
            )
        )
        _declare_gauges(worker, self.registry)
        self.registry.register(_StorageCollector(worker, queue))

        worker.on("claimed", lambda e: self.claimed.inc())
        worker.on("lease_lost", lambda e: self.leases_lost.inc())
        worker.on("recovered", lambda e: self.recovered.inc())
        for outcome in OUTCOMES:
            worker.on(outcome, self._finished)

    def _finished(self, event: WorkerEvent) -> None:
        self.finished[event.name].inc()
        if event.duration is not None:
            self.duration[event.name].observe(event.duration)

    # --- health ------------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the worker is healthy, and the facts behind the verdict."""
        worker = self.worker
        failing_since = worker.claim_failing_since
        failing_for = None if failing_since is None else sources.monotonic() - failing_since
        facts: dict[str, Any] = {
            "worker_id": worker.worker_id,
            "queue": worker.queue.name,
            "running": worker.is_running,
            "stopping": worker.is_stopping,
            "jobs_in_hand": worker.busy,
            "processed": worker.processed,
            "failed": worker.failed,
            "claims_failing_for_seconds": None if failing_for is None else round(failing_for, 1),
        }
        problem = None
        if worker.exit_error is not None:
            problem = f"stopped on an error: {worker.exit_error}"
        elif not worker.is_running:
            problem = "not running"
        elif worker.is_stopping:
            problem = "stopping"
        elif failing_for is not None and failing_for > self.unhealthy_after:
            problem = f"every claim has failed for {failing_for:.0f} s (storage unreachable?)"
        facts["healthy"] = problem is None
        if problem is not None:
            facts["problem"] = problem
        return problem is None, facts

    # --- HTTP ---------------------------------------------------------------------------------

    async def serve(self, host: str = "127.0.0.1", port: int = 9191) -> asyncio.Server:
        """Start answering on ``host:port`` (port 0 picks a free one: see
        ``server.sockets[0].getsockname()``); close the returned server to stop."""
        # No Host check, unlike the dashboard: Prometheus scrapes by pod address or by a
        # service name the worker cannot know, and a refused scrape is an outage. What a
        # rebound page could read here is counts and health, never a job's payload.
        return await webserver.serve(self.answer, host, limits.PORT.check(port, "port"))

    async def answer(self, request: webserver.Request) -> webserver.Response:
        if request.path == "/metrics":
            return webserver.Response(200, CONTENT_TYPE_LATEST, generate_latest(self.registry))
        if request.path == "/cluster":
            return webserver.Response.json(self.cluster_view())
        if request.path == "/livez":
            return webserver.Response.text(200, "ok\n")
        if request.path in ("/healthz", "/readyz"):
            healthy, facts = self.health()
            return webserver.Response.json(facts, 200 if healthy else 503)
        return webserver.Response.text(404, "try /metrics, /healthz, /livez or /cluster\n")

    def cluster_view(self) -> dict[str, Any]:
        """``GET /cluster``: the queue's cluster snapshot as this worker last read it
        (the KEDA metrics-api scaler reads ``backlog`` from here). ``backlog`` and
        its counts are null until a coordinator has counted."""
        worker = self.worker
        queue = worker.queue.name
        record = worker.cluster.snapshot(queue)
        backlog = record.backlog if record is not None else None
        counts = None if backlog is None else workers_view.backlog_counts(backlog)
        return {
            "queue": queue,
            "worker_id": worker.worker_id,
            "coordinator": None if record is None else record.holder or None,
            "epoch": None if record is None else record.epoch,
            "coordinator_expires_at": None if record is None else record.expires_at,
            "is_coordinator": worker.cluster.coordinates(queue),
            "workers": worker.cluster.workers,
            "owned_shards": sorted(worker.queue.owned or []),
            "backlog": None if counts is None else counts["pending"] + counts["delayed"],
            "counts": counts,
        }


def _declare_gauges(worker: Worker, registry: CollectorRegistry) -> None:
    """The gauges of ``worker``'s state, read from it at scrape time."""
    gauges: list[tuple[str, str, Callable[[], float]]] = [
        ("s3queue_jobs_running", "Handlers running now.", lambda: worker.running_jobs),
        ("s3queue_jobs_buffered", "Leases waiting for a free slot.", lambda: worker.buffered),
        (
            "s3queue_worker_concurrency",
            "Slots (autoscaling moves them).",
            lambda: worker.concurrency,
        ),
        (
            "s3queue_worker_prefetch",
            "Leases held beyond running jobs.",
            lambda: worker.prefetch,
        ),
        (
            "s3queue_cluster_workers",
            "Live workers serving the queue, as its cluster object names them (this one included).",
            lambda: worker.cluster.workers,
        ),
        (
            "s3queue_is_coordinator",
            "1 while this worker holds the queue's coordinator lease, else 0.",
            lambda: float(worker.cluster.coordinates(worker.queue.name)),
        ),
        (
            "s3queue_owned_shards",
            "Shards this worker owns (claims from first) among the live workers.",
            lambda: worker.cluster.owned(worker.queue.name),
        ),
    ]
    queue = worker.queue.name
    for name, doc, read in gauges:
        Gauge(name, doc, ["queue"], registry=registry).labels(queue).set_function(read)


def _backlog(worker: Worker, queue: str) -> Iterator[GaugeMetricFamily]:
    """The backlog from the cluster snapshot (every worker of the queue serves the
    same numbers: what autoscalers such as KEDA read), once a coordinator wrote one:
    no number is better than a made-up 0."""
    record = worker.cluster.snapshot(queue)
    backlog = record.backlog if record is not None else None
    if backlog is None:
        return
    for state in ("pending", "delayed", "processing", "dead"):
        family = GaugeMetricFamily(
            f"s3queue_queue_{state}",
            f"Messages {state} in the queue when its coordinator last counted "
            "(see s3queue_queue_counted_at_seconds).",
            labels=["queue"],
        )
        family.add_metric([queue], getattr(backlog, state))
        yield family
    at = GaugeMetricFamily(
        "s3queue_queue_counted_at_seconds",
        "When (unix time, the store's clock) the coordinator last counted the queue.",
        labels=["queue"],
    )
    at.add_metric([queue], backlog.at)
    yield at


class _StorageCollector(Collector):
    """Storage requests of the worker's queue by kind, read at scrape time."""

    def __init__(self, worker: Worker, queue: str) -> None:
        self.worker = worker
        self.queue = queue

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counts = self.worker.queue.storage.counts.snapshot()
        requests = CounterMetricFamily(
            "s3queue_storage_requests",
            "Requests sent to storage by this process for this queue, by kind.",
            labels=["queue", "kind"],
        )
        for kind in ("get", "put", "conditional_put", "delete", "list"):
            requests.add_metric([self.queue, kind], counts.get(kind, 0))
        yield requests
        yield from _backlog(self.worker, self.queue)
        problems = CounterMetricFamily(
            "s3queue_storage_retries",
            "Storage answers that were retried: conflicts (412), throttling (503), others.",
            labels=["queue", "reason"],
        )
        for reason in ("precondition_failed", "throttled", "retried"):
            problems.add_metric([self.queue, reason], counts.get(reason, 0))
        yield problems
        clock = self.worker.queue.store_clock
        if clock is not None and clock.bounds is not None:
            # Only once measured: an unmeasured offset of 0 would be a claim, not a fact.
            skew = GaugeMetricFamily(
                "s3queue_clock_skew_seconds",
                "How far this machine's clock is ahead of the store's (negative: behind); "
                "s3queue corrects for it.",
                labels=["queue"],
            )
            skew.add_metric([self.queue], clock.offset)
            yield skew
            error = GaugeMetricFamily(
                "s3queue_clock_skew_uncertainty_seconds",
                "The most the skew estimate can be off by (S3 stamps whole seconds).",
                labels=["queue"],
            )
            error.add_metric([self.queue], clock.uncertainty)
            yield error
