"""The ``s3queue`` command line: worker, enqueue, create, stats, inspect, cancel,
dead, redrive, purge, delete, doctor, queues, dashboard and demo.

Invariant: a user's mistake or a store's refusal prints one line, ``error: what
happened (what to do)``, and exits with the code of the contract below; tracebacks
appear only with --debug. Nothing it prints holds the secret of the store URL: errors,
tracebacks and log lines pass through :func:`scrub`, hints show the redacted URL.

Exit codes (README and docs/CLI.md repeat them):

- 0: done.
- 1: the command was well formed but its operation failed: storage unreachable or
  refusing, a queue or message that does not exist (``cancel``: any of its ids), an
  id that is not a dead letter,
  problems ``doctor`` leaves, a worker stopped by an error.
- 2: the command line or the configuration is wrong, and running it again as it is
  cannot help: no command, an unknown command or option, a missing argument, a value
  that is not a number or out of range, bad JSON, a bad URL or queue name, a handler
  that does not import, a busy port, a setting a queue's fixed ones contradict.
- 130: interrupted (Ctrl-C) outside a worker, which stops cleanly on it instead.

Global options (--url, --log-level, --log-format, --quiet, --debug) are accepted
before the command and, as users of other tools type them, after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import Progress
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from s3queue import limits, sources
from s3queue.app.app import App, When
from s3queue.backoff import Backoff
from s3queue.core import layout
from s3queue.core.catalog import list_queues
from s3queue.core.layout import check_queue_name
from s3queue.core.rates import RateLimit
from s3queue.errors import ConfigurationError, PayloadError, QueueError, QueueNotFound
from s3queue.info import CancelOutcome, MessageInfo, Stats
from s3queue.ops import logs
from s3queue.ops.logs import LogFormat
from s3queue.payload import MAX_DEPTH, check_value
from s3queue.queue import DEFAULT_SHARDS, Queue
from s3queue.runtime.cron import parse_cron
from s3queue.runtime.queues import open_queues
from s3queue.runtime.routes import Handler, Router
from s3queue.runtime.worker import Worker
from s3queue.runtime.worker_settings import Leases, Polling, Scaling
from s3queue.storage import open_storage, redact, redact_url, url_secrets
from s3queue.version import __version__

DEFAULT_URL = "file://.s3queue"
T = TypeVar("T")

out = Console()
err = Console(stderr=True)


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class _Options:
    """The global options, wherever on the command line they were given."""

    url: str = DEFAULT_URL
    debug: bool = False
    log_level: LogLevel | None = None  # None: the command's own default
    log_format: LogFormat = LogFormat.text
    quiet: bool = False


options = _Options()

#: Commands that log at INFO by default (the worker's start banner and a line per
#: finished job, as Celery and RQ workers do); the others log warnings and errors only.
TALKATIVE = {"worker"}


def scrub(text: str) -> str:
    """``text`` without any secret of the store URL, wherever it came from (our own
    messages, the argument parser's, a third party's exception in a traceback)."""
    urls = [options.url, os.environ.get("S3QUEUE_URL", "")]
    urls += [arg for arg in sys.argv[1:] if "://" in arg]  # a URL the parser stopped before
    return redact(text, [secret for url in urls for secret in url_secrets(url)])


def configure_logging(command: str | None) -> None:
    """Logs to stderr in --log-format: --log-level if given, else warnings and errors,
    and s3queue's INFO records too for a talkative command without --quiet."""
    if options.log_level is not None:
        level = s3queue_level = getattr(logging, options.log_level.upper())
    else:
        level = logging.WARNING
        talk = command in TALKATIVE and not options.quiet
        s3queue_level = logging.INFO if talk else logging.WARNING
    logs.configure(
        level=level, s3queue_level=s3queue_level, log_format=options.log_format, redact=scrub
    )


def flag(*names: str, help: str, **more: Any) -> Any:
    """A ``typer.Option`` for an on/off switch: ``--name`` alone (no ``--no-name``),
    listed without a type or default (it takes no value)."""
    return typer.Option(*names, help=help, show_default=False, **more)


def _as_flags(params: list[Any]) -> list[Any]:
    # typer lists every option's type, "--json <bool>" as if a flag took a value;
    # an empty metavar leaves the column blank for flags only.
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


# --- global options ---------------------------------------------------------------------------

_GLOBAL = "Global options (before or after the command)"
_URL_HELP = (
    "Store URL: s3://bucket/prefix, az://container/prefix, gs://bucket/prefix, "
    "file:///dir or memory://name."
)
_LOG_LEVEL_HELP = (
    "debug, info, warning or error: log records of this level and above. Default: "
    "warning (worker: info for s3queue's own records)."
)
_LOG_FORMAT_HELP = "Log lines as text, or one JSON object per line (stderr either way)."
_QUIET_HELP = "Log warnings and errors only (what every command but worker does anyway)."
_DEBUG_HELP = "Show tracebacks."


def _remember(field: str) -> Callable[[Any], Any]:
    """A callback that stores a global option given after the command."""

    def store(value: Any) -> Any:
        if value is not None and value is not False:  # not given: keep what came before
            setattr(options, field, value)
        return value

    return store


def _again(*names: str, help: str, **more: Any) -> Any:
    """A global option's copy on a command: no default or variable of its own (those
    belong to the copy before the command, which this one overrides)."""
    field = names[0].removeprefix("--").replace("-", "_")
    return typer.Option(
        *names,
        help=help,
        callback=_remember(field),
        expose_value=False,
        rich_help_panel=_GLOBAL,
        show_default=False,
        **more,
    )


def _global_options(
    url: Annotated[str | None, _again("--url", help=_URL_HELP, metavar="URL")] = None,
    log_level: Annotated[
        LogLevel | None,
        _again("--log-level", help=_LOG_LEVEL_HELP, case_sensitive=False, metavar="LEVEL"),
    ] = None,
    log_format: Annotated[
        LogFormat | None, _again("--log-format", help=_LOG_FORMAT_HELP, case_sensitive=False)
    ] = None,
    quiet: Annotated[bool, _again("--quiet", "-q", help=_QUIET_HELP)] = False,
    debug: Annotated[bool, _again("--debug", help=_DEBUG_HELP)] = False,
) -> None:
    """Never called: the parameters typer reads the global options' copies from."""


_copies = typer.Typer(add_completion=False)
_copies.command()(_global_options)


class Command(TyperCommand):
    """An s3queue command: it also takes the global options (after its arguments, as
    git, pip and celery users type them), lists flags without a type, and sets up
    logging once every option has been read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(typer.main.get_command(_copies).params)  # fresh copies

    def get_params(self, ctx: Any) -> list[Any]:
        return _as_flags(super().get_params(ctx))

    def invoke(self, ctx: Any) -> Any:
        configure_logging(self.name)
        return super().invoke(ctx)


class Group(TyperGroup):
    """The ``s3queue`` group: flags listed without a type (typer's own too)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _as_flags(super().get_params(ctx))


app = typer.Typer(
    cls=Group,
    help="s3queue: a job queue whose only infrastructure is object storage.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"s3queue {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main_options(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="S3QUEUE_URL", metavar="URL", help=_URL_HELP)
    ] = DEFAULT_URL,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            envvar="S3QUEUE_LOG_LEVEL", case_sensitive=False, metavar="LEVEL", help=_LOG_LEVEL_HELP
        ),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(envvar="S3QUEUE_LOG_FORMAT", case_sensitive=False, help=_LOG_FORMAT_HELP),
    ] = LogFormat.text,
    quiet: Annotated[bool, flag("--quiet", "-q", help=_QUIET_HELP)] = False,
    debug: Annotated[bool, flag("--debug", help=_DEBUG_HELP)] = False,
    version: Annotated[
        bool,
        flag(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    options.url = url
    options.debug = debug
    options.log_level = log_level
    options.log_format = log_format
    options.quiet = quiet
    if ctx.invoked_subcommand is None:
        # No command: a usage error, so the help goes to stderr and the exit code is 2,
        # as click does (and the help is what the user needs next).
        with contextlib.redirect_stdout(sys.stderr):
            text = ctx.get_help()  # typer's rich help prints itself, returning ""
        if text:
            print(text, file=sys.stderr)
        raise typer.Exit(2)


def checked(limit: limits.Real | limits.Integer, about: str = "", *names: str, **more: Any) -> Any:
    """A ``typer.Option`` for a number in ``limit``: the range is shown in --help, and a
    value that is not a number, or is outside the range, is refused before anything
    runs, in limits' words, naming the option as the user typed it
    (``--visibility-timeout``, not ``visibility_timeout``)."""

    def check(param: typer.CallbackParam, value: Any) -> Any:
        return limit.optional(value, max(param.opts, key=len))  # the long form, not "-c"

    about = f"{about} Range: {limit.describe()}.".strip()
    return typer.Option(*names, help=about, parser=_number, callback=check, **more)


def _number(text: str) -> int | float | str:
    """A number as typed: an int, else a float, else the text itself, which the
    option's limit then refuses with its range (not "Input should be a valid integer")."""
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(make())  # type: ignore[arg-type]


async def open_queue(name: str, **kwargs: Any) -> Queue:
    return await Queue.open(options.url, name, **kwargs)


async def listen(
    serve: Callable[[str, int], Awaitable[asyncio.Server]],
    host: str,
    port: int,
    what: str,
    flag: str,
) -> tuple[asyncio.Server, str]:
    """Start an HTTP server; return it and its base URL. A busy port is a one-line
    error naming the flag that picks another."""
    try:
        server = await serve(host, port)
    except OSError as error:
        raise ConfigurationError(
            f"cannot serve {what} on {host}:{port}: {error.strerror}",
            suggestion=f"pick a free port with {flag}",
        ) from error
    bound = server.sockets[0].getsockname()
    return server, f"http://{bound[0]}:{bound[1]}/"


def parse_json(text: str, where: str = "payload") -> Any:
    def refuse(constant: str) -> Any:  # Python's json reads NaN and Infinity; JSON has neither
        raise ConfigurationError(
            f"invalid JSON {where}: {constant} is not a JSON number",
            suggestion="send null, or the number as a string",
        )

    try:
        value = json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as error:
        raise ConfigurationError(
            f"invalid JSON {where}: {error}",
            suggestion="""quote the payload for your shell, e.g. '{"to": "ada@example.com"}'""",
        ) from error
    except RecursionError:
        raise ConfigurationError(
            f"invalid JSON {where}: it nests lists and objects thousands of levels deep",
            suggestion=f"flatten it: a payload may nest {MAX_DEPTH} levels",
        ) from None
    check_value(value, f"the {where}")  # refused here, where the line of a --file is known
    return value


# --- worker --------------------------------------------------------------------------------


def load_handler(spec: str) -> Callable[..., Any]:
    handler = load_object(spec, "handler")
    if not callable(handler):
        raise ConfigurationError(
            f"{spec} is not callable", suggestion="point at a function taking (payload, ctx)"
        )
    return handler  # type: ignore[no-any-return]


def load_object(spec: str, what: str) -> Any:
    """The object ``module:attribute`` names, imported from the current directory too."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        example = "myapp.tasks:app" if what == "app" else "myapp.tasks:send"
        raise ConfigurationError(
            f"invalid {what} {spec!r}",
            suggestion=f"write it as module:name, e.g. {example}",
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ConfigurationError(
            f"cannot import module {module_name!r}: {error}",
            suggestion="run from the directory that contains it, or fix PYTHONPATH",
        ) from error
    found = getattr(module, attribute, None)
    if found is None:
        raise ConfigurationError(
            f"module {module_name!r} has no attribute {attribute!r}",
            suggestion="check the name after ':'",
        )
    return found


# The worker command's options, one alias each, so that the command itself reads as
# the settings it builds.
_Concurrency = Annotated[
    int,
    checked(
        limits.CONCURRENCY,
        "Jobs run at once (where autoscaling starts).",
        "--concurrency",
        "-c",
    ),
]
_VisibilityTimeout = Annotated[
    float, checked(limits.VISIBILITY_TIMEOUT, "Lease length in seconds (extended while running).")
]
_MaxAttempts = Annotated[
    int | None,
    checked(limits.MAX_ATTEMPTS, "Cap on attempts (the message's own limit applies too)."),
]
_PollInterval = Annotated[
    float,
    checked(
        limits.POLL_INTERVAL,
        "With nothing to claim, one storage request per this many seconds on "
        "average (pickup after a quiet spell takes about half of it).",
    ),
]
_JobTimeout = Annotated[
    float | None, checked(limits.JOB_TIMEOUT, "Cancel a job after this many seconds.")
]
_ShutdownTimeout = Annotated[
    float, checked(limits.SHUTDOWN_TIMEOUT, "Seconds to finish running jobs on SIGTERM.")
]
_MinConcurrency = Annotated[
    int | None,
    checked(
        limits.CONCURRENCY,
        "Autoscaling floor: one job fewer after a claim round that found nothing, down to "
        "this. Default: --concurrency.",
    ),
]
_MaxConcurrency = Annotated[
    int | None,
    checked(
        limits.CONCURRENCY,
        "Autoscaling ceiling: one job more after a round that left leases waiting, up to "
        "this. Default: --concurrency.",
    ),
]
_SweepInterval = Annotated[
    float,
    checked(
        limits.SWEEP_EVERY,
        "Sweep each queue served this often while coordinating it (collect what its "
        "retention says is over; one worker at a time does it). 0: never (leave it to "
        "other workers or s3queue sweep).",
    ),
]
_MaxPollInterval = Annotated[
    float,
    checked(
        limits.MAX_POLL_INTERVAL,
        "Idle workers of a cluster share the polling: together they check each shard "
        "at least this often (and the queue once per --poll-interval).",
    ),
]
_HeartbeatInterval = Annotated[
    float,
    checked(
        limits.HEARTBEAT_INTERVAL,
        "Rewrite this worker's heartbeat (one PUT per queue) and read the cluster object "
        "this often; a worker silent for three intervals is dead and its shards move.",
    ),
]
_Prefetch = Annotated[
    int | None,
    checked(
        limits.PREFETCH,
        "Leases held beyond the running jobs. Default: adaptive, from 0 (a worker "
        "that just started, or long jobs) up to 4 x concurrency (jobs shorter than a "
        "claim).",
    ),
]
_BackoffInitial = Annotated[
    float | None, checked(limits.RETRY_DELAY, "First retry delay in seconds.")
]
_BackoffMax = Annotated[
    float | None, checked(limits.RETRY_DELAY, "Longest retry delay in seconds.")
]
_Burst = Annotated[bool, flag("--burst", help="Drain the queue, then exit.")]
_CronOption = Annotated[
    list[str] | None,
    typer.Option(
        metavar="TEXT",
        help="Also enqueue a periodic job: '<schedule> <JSON payload>', UTC, e.g. "
        '\'*/5 * * * * {"task": "report"}\'. Repeatable; every worker may run '
        "the same schedules (each tick is enqueued once).",
    ),
]
_MetricsPort = Annotated[
    int | None,
    checked(
        limits.PORT,
        "Serve /metrics (Prometheus), /healthz and /livez on this port.",
        envvar="S3QUEUE_METRICS_PORT",
    ),
]
_MetricsHost = Annotated[
    str, typer.Option(help="Address for --metrics-port; 0.0.0.0 in a container.")
]
_ReportCounts = Annotated[Path | None, typer.Option(hidden=True)]
_RateLimitOption = Annotated[
    str | None,
    typer.Option(
        metavar="N/s|N/m|N/h",
        help="Start at most this many jobs of each queue served, across every worker "
        "given the same limit (not per worker), e.g. 50/s.",
    ),
]


_AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-A",
        metavar="MODULE:APP",
        help="Run the tasks of this s3queue.App (instead of QUEUE HANDLER). Its URL is "
        "used unless --url or S3QUEUE_URL says otherwise.",
    ),
]
_QueuesOption = Annotated[
    str | None,
    typer.Option(
        "--queues", "-Q", metavar="A,B", help="With --app: serve these queues (default: all)."
    ),
]


@app.command(cls=Command)
def worker(  # noqa: PLR0913 - typer reads a command's options from its parameters
    queue: Annotated[str | None, typer.Argument(help="Queue name.")] = None,
    handler: Annotated[
        str | None, typer.Argument(help="module:function taking (payload, ctx).")
    ] = None,
    app_spec: _AppOption = None,
    queues: _QueuesOption = None,
    concurrency: _Concurrency = 10,
    visibility_timeout: _VisibilityTimeout = 30.0,
    max_attempts: _MaxAttempts = None,
    poll_interval: _PollInterval = 1.0,
    job_timeout: _JobTimeout = None,
    shutdown_timeout: _ShutdownTimeout = 30.0,
    min_concurrency: _MinConcurrency = None,
    max_concurrency: _MaxConcurrency = None,
    prefetch: _Prefetch = None,
    sweep_interval: _SweepInterval = 60.0,
    max_poll_interval: _MaxPollInterval = 10.0,
    heartbeat_interval: _HeartbeatInterval = 90.0,
    backoff_initial: _BackoffInitial = None,
    backoff_max: _BackoffMax = None,
    burst: _Burst = False,
    cron: _CronOption = None,
    metrics_port: _MetricsPort = None,
    metrics_host: _MetricsHost = "127.0.0.1",
    rate_limit: _RateLimitOption = None,
    report_counts: _ReportCounts = None,
) -> None:
    """Run a worker pool until SIGTERM/SIGINT (or, with --burst, until the queue is
    empty): of QUEUE with HANDLER, or of an app's tasks with --app."""
    names, function = _what_to_run(queue, handler, app_spec, queues)
    crons = [parse_cron(text) for text in cron or []]
    limit = None if rate_limit is None else RateLimit.parse(rate_limit)

    def build(q: list[Queue]) -> Worker:
        # Built once the queue is open: a refused --backoff-max is reported after it.
        backoff = _backoff(backoff_initial, backoff_max)
        leases = Leases(visibility_timeout, job_timeout, shutdown_timeout, max_attempts, backoff)
        pool = Worker(
            q,
            function,
            concurrency=concurrency,
            leases=leases,
            polling=Polling(
                poll_interval,
                prefetch,
                sweep_interval or None,
                max_poll_interval=max_poll_interval,
                heartbeat_interval=heartbeat_interval,
            ),
            scaling=Scaling(min_concurrency=min_concurrency, max_concurrency=max_concurrency),
            cron=crons,
        )
        for queue in q if limit is not None else []:
            queue.set_rate_limit(limit)  # after the app's own limits (-A): this one wins
        return pool

    metrics = None if metrics_port is None else (metrics_host, metrics_port)
    run(lambda: _work(names, build, burst=burst, metrics=metrics, report_counts=report_counts))


def _what_to_run(
    queue: str | None, handler: str | None, app_spec: str | None, queues: str | None
) -> tuple[list[str], Handler | Router]:
    """The queues a worker serves and what runs their messages."""
    if app_spec is None:
        if queues is not None:
            raise ConfigurationError(
                "--queues picks queues of an app: it needs --app MODULE:APP",
                suggestion="s3queue worker -A myapp.tasks:app -Q emails "
                "(a handler worker serves its one QUEUE)",
            )
        if queue is None or handler is None:
            raise ConfigurationError(
                "the worker needs QUEUE and HANDLER, or --app MODULE:APP",
                suggestion="e.g. s3queue worker emails myapp.jobs:send, "
                "or s3queue worker -A myapp.tasks:app",
            )
        return [queue], load_handler(handler)
    if queue is not None or handler is not None:
        raise ConfigurationError(
            "--app runs the app's tasks: QUEUE and HANDLER cannot be given with it",
            suggestion="pick the app's queues with --queues a,b",
        )
    the_app = load_app(app_spec)
    names = [n.strip() for n in queues.split(",") if n.strip()] if queues else the_app.queues
    if not names:
        raise ConfigurationError(
            f"{app_spec} defines no tasks", suggestion="decorate functions with @app.task"
        )
    for name in names:
        check_queue_name(name)
    if options.url != DEFAULT_URL:
        the_app.url = options.url  # --url or S3QUEUE_URL: the app's tasks go there too
    else:
        options.url = the_app.url
    return names, the_app.router()


def load_app(spec: str) -> App:
    found = load_object(spec, "app")
    if not isinstance(found, App):
        raise ConfigurationError(
            f"{spec} is {type(found).__name__}, not an s3queue.App",
            suggestion="point at the App object: module:app",
        )
    return found


def _backoff(initial: float | None, longest: float | None) -> Backoff | None:
    """The backoff of --backoff-initial and --backoff-max; None (the queue's) without them."""
    if initial is None and longest is None:
        return None
    first = initial if initial is not None else 1.0
    return Backoff(initial=first, max=longest if longest is not None else max(first, 300.0))


async def _work(
    names: list[str],
    build: Callable[[list[Queue]], Worker],
    *,
    burst: bool,
    metrics: tuple[str, int] | None,
    report_counts: Path | None,
) -> None:
    """Open the queues, run ``build(queues)`` on them until it stops, then close them."""
    async with open_queues(options.url, names) as opened:
        await _serve(build(opened), burst=burst, metrics=metrics, report_counts=report_counts)


async def _serve(
    worker: Worker, *, burst: bool, metrics: tuple[str, int] | None, report_counts: Path | None
) -> None:
    server = None
    if metrics is not None:
        from s3queue.ops.monitor import WorkerMonitor

        host, port = metrics
        server, base = await listen(
            WorkerMonitor(worker).serve, host, port, "metrics", "--metrics-port"
        )
        print(f"metrics on {base}metrics", flush=True)
    print(f"worker {worker.worker_id} ready on {', '.join(worker.queues.names)}", flush=True)
    try:
        await worker.run(handle_signals=True, burst=burst)
    finally:
        if server is not None:
            server.close()
        if report_counts is not None:
            _write_counts(report_counts, worker)


def _write_counts(path: Path, worker: Worker) -> None:
    """--report-counts (for the benchmarks): jobs done and storage requests made."""
    report = {
        "processed": worker.processed,
        "failed": worker.failed,
        **worker.queue.storage.counts.snapshot(),
    }
    path.write_text(json.dumps(report))  # a few bytes, once, on the way out


# --- producer side --------------------------------------------------------------------------


_Json = Annotated[bool, flag("--json", help="Print JSON instead (schema: docs/CLI.md).")]


def emit(data: Any) -> None:
    """Print ``data`` as one line of JSON on stdout: what every --json prints."""
    print(json.dumps(data), flush=True)


# The enqueue command's options, one alias each (as the worker's).
_FileOption = Annotated[
    Path | None, typer.Option("--file", "-f", help="A JSON-lines file: one payload per line.")
]
_Delay = Annotated[float, checked(limits.DELAY, "Seconds before it may run.")]
_At = Annotated[
    str | None,
    typer.Option(
        metavar="TIME",
        help="When it may run: ISO 8601, e.g. 2026-12-01T09:00:00+01:00 (no offset: UTC).",
    ),
]
_Priority = Annotated[int, checked(limits.PRIORITY, "Higher runs first.")]
_DedupKey = Annotated[str | None, typer.Option(help="Enqueue only once per key.")]
_Attempts = Annotated[
    int | None,
    checked(limits.MAX_ATTEMPTS, "Attempts before it is dead. Default: the queue's."),
]
_RateKey = Annotated[
    str | None,
    typer.Option(help="Fall under the workers' rate limit of this key (Queue.set_rate_limit)."),
]


@app.command(cls=Command)
def enqueue(  # noqa: PLR0913 - typer reads a command's options from its parameters
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    payload: Annotated[str | None, typer.Argument(help="JSON payload.")] = None,
    file: _FileOption = None,
    delay: _Delay = 0.0,
    at: _At = None,
    priority: _Priority = 0,
    dedup_key: _DedupKey = None,
    max_attempts: _Attempts = None,
    rate_key: _RateKey = None,
    as_json: _Json = False,
) -> None:
    """Enqueue one JSON payload (prints its id) or every line of --file."""
    when = When(delay=delay or None, at=_parse_time(at))
    if (payload is None) == (file is None):
        raise ConfigurationError(
            "give a JSON payload or --file, not both or neither",
            suggestion="s3queue enqueue QUEUE '{\"x\": 1}'",
        )
    if file is not None:
        if dedup_key is not None:
            raise ConfigurationError(
                "--dedup-key applies to a single payload", suggestion="drop --dedup-key with --file"
            )
        payloads = _read_jsonl(file)
        extra = {"max_attempts": max_attempts, "rate_key": rate_key}
        ids = run(lambda: _enqueue_all(queue, payloads, when, priority, extra))
        if as_json:
            emit({"enqueued": len(ids), "ids": ids})
        else:
            out.print(f"enqueued {len(ids)} messages")
        return
    assert payload is not None
    value = parse_json(payload)

    async def one() -> str:
        async with await open_queue(queue) as q:
            return await q.enqueue(
                value,
                delay=when.seconds_from(q.clock()),
                priority=priority,
                dedup_key=dedup_key,
                max_attempts=max_attempts,
                rate_key=rate_key,
            )

    message_id = run(one)
    if as_json:
        emit({"id": message_id})
    else:
        print(message_id)


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"--at {text!r} is not a time",
            suggestion="write it in ISO 8601, e.g. 2026-12-01T09:00:00Z (no offset: UTC)",
        ) from None


async def _enqueue_all(
    queue: str, payloads: list[Any], when: When, priority: int, extra: dict[str, Any]
) -> list[str]:
    """Enqueue ``payloads`` in batches, with a progress bar on stderr; their ids."""
    ids: list[str] = []
    async with await open_queue(queue) as q:
        delay = when.seconds_from(q.clock())
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("enqueue", total=len(payloads))
            for start in range(0, len(payloads), 500):
                batch = payloads[start : start + 500]
                ids += await q.enqueue_many(batch, delay=delay, priority=priority, **extra)
                progress.advance(task, len(batch))
    return ids


def _read_jsonl(path: Path) -> list[Any]:
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read {path}: {error.strerror}", suggestion="check the path"
        ) from error
    return [
        parse_json(line, f"payload on line {n} of {path}")
        for n, line in enumerate(lines, 1)
        if line.strip()
    ]


@app.command(cls=Command)
def create(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    shards: Annotated[
        int | None,
        checked(
            limits.SHARDS,
            f"Shards: parallel cursors (fixed at creation). Default: {DEFAULT_SHARDS}.",
        ),
    ] = None,
    max_attempts: Annotated[
        int, checked(limits.MAX_ATTEMPTS, "Default attempts per message before it is dead.")
    ] = 3,
    as_json: _Json = False,
) -> None:
    """Create a queue (producers and workers also create the queues they use). A queue
    that exists already is left as it is; only a different --shards is an error."""

    async def main() -> tuple[bool, int]:
        try:
            q = await open_queue(queue, create=False)
            created = False
        except QueueNotFound:
            q = await open_queue(queue, shards=shards or DEFAULT_SHARDS, max_attempts=max_attempts)
            created = True
        await q.close()
        return created, q.settings.shards

    created, found = run(main)
    if not created and shards is not None and found != shards:
        raise ConfigurationError(
            f"queue {queue!r} already exists with {found} shards",
            suggestion="the shard count is fixed at creation; pick another name",
        )
    if as_json:
        emit({"queue": queue, "created": created, "shards": found})
    elif created:
        out.print(f"created queue {queue} with {found} shards")
    else:
        out.print(f"queue {queue} already exists with {found} shards")


# --- looking ----------------------------------------------------------------------------------


def stats_table(name: str, s: Stats, shards: bool) -> Table:
    table = Table(title=f"queue {name}")
    columns = (
        "pending",
        "delayed",
        "processing",
        "completed",
        "dead",
        "cancelled",
        "retried",
        "recovered",
    )
    if shards:
        table.add_column("shard")
    for column in columns:
        table.add_column(column, justify="right")
    if shards:
        for shard in s.shards:
            table.add_row(str(shard.shard), *(str(getattr(shard, c)) for c in columns))
        table.add_section()
        table.add_row("all", *(str(getattr(s, c)) for c in columns))
    else:
        table.add_row(*(str(getattr(s, c)) for c in columns))
    return table


@app.command(cls=Command)
def stats(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    as_json: _Json = False,
    watch: Annotated[
        bool, flag("--watch", help="Refresh until Ctrl-C (with --json: one line per refresh).")
    ] = False,
    interval: Annotated[
        float, checked(limits.REFRESH, "Seconds between refreshes with --watch.")
    ] = 2.0,
    shards: Annotated[bool, flag("--shards", help="One row per shard.")] = False,
) -> None:
    """Counts by status; --shards rows sum to the totals.

    pending, delayed, processing: messages in that state now.
    dead: dead letters stored now (redrive and purge remove them).
    completed, cancelled, retried, recovered: since the queue was created or last
    purged (completions, cancellations, failed attempts to be retried, expired
    leases taken back).
    """

    async def main() -> None:
        async with await open_queue(queue, create=False) as q:
            if not watch:
                _show_stats(queue, await q.stats(), as_json=as_json, shards=shards)
                return
            if as_json:
                while True:
                    emit((await q.stats()).to_json())
                    await asyncio.sleep(interval)  # a refresh period
            with Live(console=out, auto_refresh=False) as live:
                while True:
                    live.update(stats_table(queue, await q.stats(), shards), refresh=True)
                    await asyncio.sleep(interval)  # a display refresh period

    with contextlib.suppress(KeyboardInterrupt):
        run(main)


def _show_stats(queue: str, s: Stats, *, as_json: bool, shards: bool) -> None:
    if as_json:
        emit(s.to_json())
    else:
        out.print(stats_table(queue, s, shards))
    for problem in s.problems:
        err.print(f"problem: {problem.key}: {problem.what}", soft_wrap=True)
    if s.problems:
        err.print(f"the counts leave these out; see: s3queue doctor {queue}")


def describe(info: MessageInfo) -> Table:
    table = Table(show_header=False, title=f"message {info.id}")
    table.add_column("field", style="bold")
    table.add_column("value")
    status = f"{info.status} (cancel requested)" if info.cancel_requested else info.status
    if info.status == "expired":
        # Nothing else is known any more: no made-up attempts, payload or times.
        table.add_row("status", "expired (finished longer ago than the queue keeps results)")
        return table
    rows: list[tuple[str, Any]] = [
        ("status", status),
        ("attempts", f"{info.attempts} of {info.max_attempts}"),
        ("priority", info.priority),
        ("enqueued", _when(info.enqueued_at)),
        ("payload", json.dumps(info.payload)),
    ]
    if info.status in ("pending", "delayed") and info.visible_at:
        rows.append(("visible at", _when(info.visible_at)))
    if info.owner:
        rows.append(("owner", info.owner))
        rows.append(("lease expires", _when(info.lease_expires_at)))
    if info.progress is not None:
        rows.append(("progress", json.dumps(info.progress)))
    if info.result is not None:
        rows.append(("result", json.dumps(info.result)))
    if info.finished_at:
        rows.append(("finished", _when(info.finished_at)))
    for error in info.errors:
        rows.append((f"error (attempt {error.attempt})", f"{error.type}: {error.message}"))
    for field, value in rows:
        table.add_row(field, str(value))
    return table


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f" ({ts - sources.wall():+.1f} s)"
    )


@app.command(cls=Command)
def inspect(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    message_id: Annotated[str, typer.Argument(help="Message id, as enqueue printed it.")],
    as_json: _Json = False,
) -> None:
    """Status, attempts, payload, result and errors of one message."""

    async def main() -> MessageInfo | None:
        async with await open_queue(queue, create=False) as q:
            return await q.get(message_id)

    info = run(main)
    if info is None:
        print(f"error: no message {message_id} in queue {queue}", file=sys.stderr)
        raise typer.Exit(1)
    if as_json:
        emit(info.to_json())
    else:
        out.print(describe(info))


@app.command(cls=Command)
def cancel(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    ids: Annotated[list[str], typer.Argument(help="Message ids, as enqueue printed them.")],
    as_json: _Json = False,
) -> None:
    """Cancel messages: one that has not started never runs; a running one's worker
    is told to stop (within a third of its visibility timeout), and it ends cancelled.

    Prints what happened to each id. Exits 1 if an id names no message (the others
    are cancelled all the same).
    """

    async def main() -> list[CancelOutcome]:
        async with await open_queue(queue, create=False) as q:
            return await q.cancel(ids)

    outcomes = run(main)
    if as_json:
        emit([outcome.to_json() for outcome in outcomes])
    else:
        for outcome in outcomes:
            print(f"{outcome.id}: {outcome.status} ({outcome.detail})")
    missing = [o.id for o in outcomes if o.status == "not_found"]
    if missing:
        print(f"error: no message {', '.join(missing)} in queue {queue}", file=sys.stderr)
        raise typer.Exit(1)


@app.command(cls=Command)
def dead(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    limit: Annotated[int, checked(limits.LIST_LIMIT, "Show at most this many.")] = 100,
    as_json: _Json = False,
) -> None:
    """List dead letters with their last error."""

    async def main() -> list[MessageInfo]:
        async with await open_queue(queue, create=False) as q:
            return await q.dead_letters(limit)

    letters = run(main)
    if as_json:
        emit([info.to_json() for info in letters])
        return
    table = Table(title=f"dead letters of {queue} ({len(letters)})")
    for column in ("id", "attempts", "last error", "payload"):
        table.add_column(column)
    for info in letters:
        last = info.errors[-1] if info.errors else None
        table.add_row(
            info.id,
            str(info.attempts),
            f"{last.type}: {last.message}" if last else "-",
            json.dumps(info.payload)[:60],
        )
    out.print(table)
    if letters:
        out.print(f"redrive them with: {redrive_command(queue)}", soft_wrap=True)


def redrive_command(queue: str) -> str:
    """The command that redrives ``queue``, to print: never the URL's secret."""
    command = f"s3queue redrive {shlex.quote(queue)}"
    if options.url == os.environ.get("S3QUEUE_URL", DEFAULT_URL):
        return command  # the same URL reaches it from the environment (or the default)
    shown = redact_url(options.url)
    command = f"s3queue --url {shlex.quote(shown)} redrive {shlex.quote(queue)}"
    if shown == options.url:
        return command
    return (
        f"{command}  (*** stands for the secret key, not printed; with the URL in "
        f"S3QUEUE_URL, run: s3queue redrive {shlex.quote(queue)})"
    )


@app.command(cls=Command)
def redrive(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    ids: Annotated[
        list[str] | None, typer.Argument(help="Dead letter ids (all when none).")
    ] = None,
    as_json: _Json = False,
) -> None:
    """Move dead letters back into the queue as new messages; print old and new ids.

    An id that is not a dead letter is an error, and then nothing is redriven.
    """
    wanted = list(ids) if ids else None

    async def main() -> tuple[list[str], list[str]]:
        async with await open_queue(queue, create=False) as q:
            old = wanted if wanted is not None else await q.dead_letter_ids()
            return old, await q.redrive(old)

    old, new = run(main)
    pairs = list(zip(old, new, strict=True))
    if as_json:
        emit([{"id": o, "redriven_to": n} for o, n in pairs])
        return
    for o, n in pairs:
        print(f"{o} -> {n}")
    print(f"redrove {len(pairs)} messages", file=sys.stderr)


@app.command(cls=Command)
def purge(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    yes: Annotated[bool, flag("--yes", "-y", help="Really drop everything.")] = False,
    as_json: _Json = False,
) -> None:
    """Drop every pending, delayed and running message, dead letter and result."""
    if not yes:
        raise ConfigurationError(
            f"purge drops every message of queue {queue!r}", suggestion="add --yes to confirm"
        )

    async def main() -> None:
        async with await open_queue(queue, create=False) as q:
            await q.purge()

    run(main)
    if as_json:
        emit({"queue": queue, "purged": True})
    else:
        out.print(f"purged {queue}")


@app.command(cls=Command)
def delete(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    yes: Annotated[bool, flag("--yes", "-y", help="Really delete the queue.")] = False,
    as_json: _Json = False,
) -> None:
    """Delete the queue: every object under its prefix, its settings first."""
    if not yes:
        raise ConfigurationError(
            f"delete removes queue {queue!r} and everything in it",
            suggestion="add --yes to confirm",
        )

    async def main() -> None:
        async with await open_queue(queue, create=False) as q:
            await q.delete()

    run(main)
    if as_json:
        emit({"queue": queue, "deleted": True})
    else:
        out.print(f"deleted {queue}")


@app.command(cls=Command)
def doctor(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    fix: Annotated[bool, flag("--fix", help="Repair what can be repaired.")] = False,
    as_json: _Json = False,
) -> None:
    """List what is wrong with a queue's objects and what --fix would do about it.

    Reads every object under the queue's prefix; changes nothing without --fix.
    Exits 1 while problems remain.
    """
    from s3queue.ops import doctor as checks

    async def main() -> tuple[list[checks.Finding], list[str]]:
        storage = open_storage(options.url)
        done: list[str] = []
        try:
            # A repair can uncover more (new settings make the shards readable):
            # look again after each round that changed something.
            for _ in range(3):
                findings, fixed = await _examine(storage, queue, fix)
                done.extend(fixed)
                if not fixed:
                    break
            return findings, done
        finally:
            await storage.close()

    findings, done = run(main)
    for line in done:
        err.print(f"fixed: {line}", soft_wrap=True)
    if as_json:
        rows = [{"key": f.key, "problem": f.problem, "fix": f.action} for f in findings]
        emit({"problems": rows, "fixed": done})
    elif not findings:
        out.print(f"queue {queue}: no problems found")
    else:
        table = Table(title=f"problems of queue {queue} ({len(findings)})")
        for column in ("object", "problem", "--fix does"):
            table.add_column(column, overflow="fold")
        for f in findings:
            table.add_row(f.key, f.problem, f.action or "nothing: left to you")
        out.print(table)
    if findings:
        raise typer.Exit(1)


async def _examine(storage: Any, queue: str, fix: bool) -> tuple[list[Any], list[str]]:
    from s3queue.errors import CorruptData
    from s3queue.ops import doctor as checks

    try:
        q = await Queue.open(storage, queue, create=False, verify_store=False)
    except CorruptData as error:
        if error.metadata.get("key") != layout.settings_key(queue):
            raise
        found = [await checks.settings_finding(storage, queue, error)]
        return found, (await checks.repair(found) if fix else [])
    try:
        findings = await checks.Doctor(q).examine()
        return findings, (await checks.repair(findings) if fix else [])
    finally:
        await q.close()


@app.command(cls=Command)
def queues(as_json: _Json = False) -> None:
    """List the queues under the URL."""

    async def main() -> list[str]:
        storage = open_storage(options.url)
        try:
            return await list_queues(storage)
        finally:
            await storage.close()

    names = run(main)
    if as_json:
        emit([{"name": name} for name in names])
        return
    for name in names:
        print(name)


@app.command(cls=Command)
def dashboard(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, checked(limits.PORT, "Port to listen on.")] = 8321,
    refresh: Annotated[
        float, checked(limits.REFRESH, "Seconds between reads of the bucket (each costs requests).")
    ] = 5.0,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            envvar="S3QUEUE_DASHBOARD_ALLOWED_HOSTS",
            help="A host name browsers reach the dashboard by, besides its address and "
            "localhost; other names are refused (DNS rebinding). Repeatable; the "
            "variable takes a comma-separated list.",
        ),
    ] = None,
) -> None:
    """Serve a read-only web dashboard of every queue under the URL."""
    # Host names hold no commas, so a list in one value (the variable's form) is safe to split.
    names = [name.strip() for value in allowed_host or [] for name in value.split(",")]
    names = [name for name in names if name]

    async def main() -> None:
        from s3queue.ops.dashboard import Dashboard

        storage = open_storage(options.url)
        try:
            board = Dashboard(storage, refresh=refresh, allowed_hosts=names)
            try:
                server, base = await listen(board.serve, host, port, "the dashboard", "--port")
                print(f"dashboard on {base} (Ctrl-C stops)", flush=True)
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
                await stop.wait()
                server.close()
            finally:
                await board.close()
        finally:
            await storage.close()

    run(main)


@app.command(cls=Command)
def demo(
    jobs: Annotated[int, checked(limits.DEMO_JOBS, "How many jobs to enqueue.")] = 3000,
    workers: Annotated[int, checked(limits.DEMO_WORKERS, "Worker processes.")] = 2,
    concurrency: Annotated[int, checked(limits.CONCURRENCY, "Concurrent jobs per worker.")] = 32,
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo queue lives.")] = Path(
        ".demo"
    ),
) -> None:
    """Enqueue simulated webhook deliveries and process them with a worker pool."""
    from s3queue.ops.demo import run_demo

    run_demo(jobs=jobs, workers=workers, concurrency=concurrency, directory=directory, console=out)


#: The exception root of typer's parser: click's, or the copy of click newer typers
#: carry (whose classes are not click's, so ``click.ClickException`` misses them).
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


def exit_code(error: BaseException) -> int:
    """The contract's exit code for an error that ended a command (module docstring)."""
    if isinstance(error, _ClickException):
        return int(error.exit_code)  # type: ignore[attr-defined]  # 2: a usage error
    if isinstance(error, ConfigurationError | PayloadError):
        return 2
    return 1


def _one_line(error: BaseException) -> str:
    """The error as the one line the user sees (before scrubbing)."""
    if isinstance(error, _ClickException):
        # An unknown option, a missing argument: click's words, and where to look.
        message = " ".join(error.format_message().split())  # type: ignore[attr-defined]
        # typer validates choices with pydantic, whose "Value error, " prefix says nothing.
        message = message.replace("Value error, ", "")
        context = getattr(error, "ctx", None)
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        return f"error: {message}{hint}"
    if isinstance(error, QueueError):
        return f"error: {error}"
    return f"error: {type(error).__name__}: {error}"


def main() -> None:
    try:
        code = app(standalone_mode=False, prog_name="s3queue")
        raise SystemExit(code if isinstance(code, int) else 0)
    except (typer.Exit, SystemExit) as done:
        code = getattr(done, "exit_code", None) if isinstance(done, typer.Exit) else done.code
        raise SystemExit(code or 0) from None
    except typer.Abort:
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as error:
        if options.debug or "--debug" in sys.argv:
            # Printed here rather than re-raised: the chain may quote the URL.
            print(scrub("".join(traceback.format_exception(error))), file=sys.stderr, end="")
        else:
            # Plain print: one line however narrow the terminal (rich would wrap it);
            # scrubbed, as the parser's message may echo a URL as typed.
            print(scrub(_one_line(error)), file=sys.stderr)
        raise SystemExit(exit_code(error)) from None


__all__ = ["app", "cli_cluster", "cli_retention", "exit_code", "layout", "main"]


# Register their commands on ``app`` (imported last: they import this module).
from s3queue.ops import cli_cluster, cli_retention  # noqa: E402
