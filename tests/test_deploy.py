"""The Kubernetes manifest asks only for what the worker really has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from s3queue.ops.cli import app

MANIFEST = Path(__file__).parent.parent / "deploy" / "kubernetes" / "worker.yaml"


def worker_container() -> dict[str, Any]:
    documents = list(yaml.safe_load_all(MANIFEST.read_text()))
    [deployment] = [d for d in documents if d["kind"] == "Deployment"]
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
