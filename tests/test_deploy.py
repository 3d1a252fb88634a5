"""The Kubernetes manifests ask only for what the worker really has."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from typer.testing import CliRunner

from s3queue import JobContext, Queue, Worker
from s3queue.ops import webserver
from s3queue.ops.cli import app
from s3queue.ops.monitor import WorkerMonitor
from tests.conftest import FAST, count_backlog

DEPLOY = Path(__file__).parent.parent / "deploy" / "kubernetes"
MANIFEST = DEPLOY / "worker.yaml"
KEDA = DEPLOY / "keda.yaml"


def documents(path: Path, kind: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind]


def worker_container() -> dict[str, Any]:
    [deployment] = documents(MANIFEST, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {"deployment": deployment, **container}


def test_every_flag_in_the_manifest_is_a_worker_option() -> None:
    help_text = CliRunner().invoke(app, ["worker", "--help"], terminal_width=200).output
    offered = set(re.findall(r"--[a-z][a-z-]+", help_text))
    container = worker_container()
    assert container["args"][:2] == ["s3queue", "worker"]
    asked = {arg for arg in container["args"] if arg.startswith("--")}
    assert asked
    assert asked <= offered, asked - offered


def test_probes_hit_real_paths_and_the_grace_period_covers_shutdown() -> None:
    container = worker_container()
    args = container["args"]
    port = int(args[args.index("--metrics-port") + 1])
    assert container["ports"][0]["containerPort"] == port
    for probe in ("livenessProbe", "readinessProbe"):
        path = container[probe]["httpGet"]["path"]
        # the paths WorkerMonitor answers (tests/test_monitor.py calls each)
        assert path in ("/livez", "/healthz", "/readyz"), path
    grace = container["deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(args[args.index("--shutdown-timeout") + 1])


def metrics_api_trigger() -> tuple[dict[str, Any], dict[str, Any]]:
    """The ScaledObject of keda.yaml and the metadata of its metrics-api trigger."""
    [scaled] = documents(KEDA, "ScaledObject")
    [trigger] = [t for t in scaled["spec"]["triggers"] if t["type"] == "metrics-api"]
    return scaled, trigger["metadata"]


def test_the_scaled_object_targets_the_worker_deployment() -> None:
    scaled, _ = metrics_api_trigger()
    deployment = worker_container()["deployment"]
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] == deployment["metadata"]["name"]
    assert scaled["metadata"].get("namespace") == deployment["metadata"].get("namespace")
    # at 0 replicas nobody would count the backlog, nor answer /cluster
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert scaled["spec"]["maxReplicaCount"] >= scaled["spec"]["minReplicaCount"]


def test_the_trigger_reads_cluster_through_a_service_on_the_metrics_port() -> None:
    scaled, trigger = metrics_api_trigger()
    url = urlsplit(trigger["url"])
    assert url.scheme == "http"
    assert url.path == "/cluster"
    service_name, namespace, *rest = (url.hostname or "").split(".")
    assert rest == ["svc", "cluster", "local"], url.hostname
    assert namespace == scaled["metadata"].get("namespace", "default")
    [service] = [s for s in documents(MANIFEST, "Service") if s["metadata"]["name"] == service_name]
    assert service["metadata"].get("namespace") == scaled["metadata"].get("namespace")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    [port] = [p for p in service["spec"]["ports"] if p["port"] == url.port]

    container = worker_container()
    args = container["args"]
    metrics_port = int(args[args.index("--metrics-port") + 1])
    # the worker binds every interface, not only the pod's loopback
    assert args[args.index("--metrics-host") + 1] == "0.0.0.0"
    target = port.get("targetPort", port["port"])
    by_name = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert by_name.get(target, target) == metrics_port
    labels = container["deployment"]["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector
    assert selector.items() <= labels.items()


async def test_the_trigger_reads_a_number_the_worker_serves() -> None:
    _, trigger = metrics_api_trigger()
    assert trigger.get("format", "json") == "json"
    location = trigger["valueLocation"]
    assert float(trigger["targetValue"]) > 0

    async def handler(payload: Any, ctx: JobContext) -> None:
        pass

    queue = await Queue.open(f"memory://deploy-{uuid.uuid4().hex[:12]}", "emails")
    try:
        worker = Worker(queue, handler, concurrency=1, polling=FAST)
        monitor = WorkerMonitor(worker)

        async def cluster() -> dict[str, Any]:
            response = await monitor.answer(webserver.Request("GET", "/cluster"))
            assert response.status == 200
            assert response.content_type == "application/json"
            view: dict[str, Any] = json.loads(response.body)
            return view

        # the key is there before any coordinator has counted, null until then
        assert (await cluster())[location] is None
        for n in range(3):
            await queue.enqueue({"n": n})
        await worker.cluster.step()  # this worker is elected, and counts an interval later
        await count_backlog(worker, "emails")
        backlog = (await cluster())[location]
        assert type(backlog) is int  # a JSON number, not a string or a bool
        assert backlog == 3
    finally:
        await queue.close()
