"""``hub-resilience demo``: a small workshop on a local hub with hub-resilience switched on.

The README's main command, so that anyone can see what the package does on their own machine
with nothing to set up: a real local hub switched on with :func:`hub_resilience.configure`,
simulated servers, a workshop of students arriving at once, a report, then everything
removed. ``--kubernetes`` runs the k8s-event benchmark's event at the demo's size on the
local control plane, stock z2jh against hub-resilience, and prints the benchmark's table
(``--kubeconfig``: the workshop, hub-resilience only, on a cluster of yours). See
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from hub_resilience.hubclient import HubAPIError
from hub_resilience.tools.chart import (
    ChartUnavailable,
    add_chart_argument,
    check_chart_path,
    draw,
)
from hub_resilience.tools.loadreport import LoadReport
from hub_resilience.tools.localhub import LocalHub, local_hub, unused_port
from hub_resilience.tools.simulate import (
    Progress,
    Simulation,
    SimulationPlan,
    add_plan_arguments,
    emit_report,
    exit_status,
    plan_from_args,
    progress_printer,
)

log = logging.getLogger(__name__)

#: The embedded default workshop.
DEFAULT_USERS = 200
DEFAULT_KUBERNETES_USERS = 60
DEFAULT_SPAWN_LIMIT = 20
DEFAULT_START_DELAY = 2.0
DEFAULT_HOLD = 10.0
DEFAULT_ACTIVITY_INTERVAL = 5.0
DEFAULT_TAB_REQUESTS = 3

#: The pod every simulated student gets on Kubernetes: small, so that the workshop fits on
#: the local cluster's four fake 4-CPU nodes; ResilientKubeSpawner makes it Guaranteed.
KUBERNETES_IMAGE = "quay.io/jupyter/base-notebook:latest"
KUBERNETES_CPU = 0.1
KUBERNETES_MEMORY = "128M"

#: Seconds of the event's steady window (everyone running) at the demo's size.
EVENT_STEADY_SECONDS = 30.0

EXIT_SET_UP_FAILED = 2
#: The event ran, but hub-resilience missed one of its goals (the table says which).
EXIT_GOAL_MISSED = 1


@dataclass(frozen=True)
class KubernetesTarget:
    """Where the hub's spawner creates pods."""

    kubeconfig: Path
    namespace: str


def hub_config(
    *,
    service_port: int,
    spawn_limit: int,
    start_delay: float,
    expected_concurrent_servers: int,
    kubernetes: KubernetesTarget | None = None,
) -> str:
    """The demo hub's config: the package switched on with configure(), nothing else
    changed but what the demo needs (simulated or tiny pods, metrics readable without a
    login so the printed /metrics address opens in a browser)."""
    lines = [
        "from hub_resilience import configure",
        "c.JupyterHub.authenticate_prometheus = False",
    ]
    if kubernetes is None:
        lines.append(f"c.SimulatedSpawner.start_delay = {start_delay!r}")
        spawner = "spawner_class=None,  # keep the SimulatedSpawner"
    else:
        lines += [
            f"c.KubeSpawner.namespace = {kubernetes.namespace!r}",
            f"c.KubeSpawner.image = {KUBERNETES_IMAGE!r}",
            'c.KubeSpawner.cmd = ["jupyterhub-singleuser"]',
            f"c.KubeSpawner.cpu_limit = {KUBERNETES_CPU!r}",
            f"c.KubeSpawner.mem_limit = {KUBERNETES_MEMORY!r}",
            "c.KubeSpawner.start_timeout = 300",
            "c.KubeSpawner.http_timeout = 120",
            "c.KubeSpawner.k8s_api_request_retry_timeout = 120",
        ]
        spawner = "# spawner_class: the default, resilient-kubespawner"
    lines += [
        "configure(",
        "    c,",
        f"    {spawner}",
        f"    service_port={service_port},",
        f"    concurrent_spawn_limit={spawn_limit},",
        f"    expected_concurrent_servers={max(1, expected_concurrent_servers)},",
        ")",
    ]
    return "\n".join(lines) + "\n"


def default_plan(kubernetes: bool) -> SimulationPlan:
    """The embedded workshop: a burst of students who work, stop, and leave a tab open."""
    return SimulationPlan(
        users=DEFAULT_KUBERNETES_USERS if kubernetes else DEFAULT_USERS,
        hold=DEFAULT_HOLD,
        activity_interval=DEFAULT_ACTIVITY_INTERVAL,
        stop=True,
        tab_requests=DEFAULT_TAB_REQUESTS,
        timeout=600.0,
        user_prefix="student-",
    )


def stopped_responses(metrics_text: str) -> int:
    """Requests the stopped-server handler answered, from the service's /metrics text."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "hub_resilience_stopped_server_responses_total":
                total += sample.value
    return int(total)


def summary_lines(
    report: LoadReport, *, hub_metrics: str, service_metrics: str, handled: int | None
) -> list[str]:
    """What the demo adds to the simulator's report: who answered the open tabs, and where
    the metrics are."""
    lines = []
    tabs = sum(report.tab_requests.values())
    if tabs:
        hub_share = 0
        if report.hub is not None:
            hub_share = sum(
                report.hub.by_handler.get(h, 0) for h in ("UserUrlHandler", "PrefixRedirectHandler")
            )
        answered = "" if handled is None else f"{handled} answered by the stopped-server handler, "
        lines.append(
            f"  open tabs            {tabs} requests to stopped servers: {answered}"
            f"{hub_share} reached the hub"
        )
    lines.append(f"  hub metrics          {hub_metrics}")
    lines.append(f"  service metrics      {service_metrics}")
    lines.append("                       (up until the demo ends; --keep-running keeps them)")
    return lines


async def _fetch_text(url: str) -> str | None:
    http = AsyncHTTPClient(force_instance=True)
    try:
        response = await http.fetch(url, raise_error=False, request_timeout=10)
    except (OSError, HTTPClientError):  # refused, reset, or no answer in time (599)
        return None
    finally:
        http.close()
    return response.body.decode("utf-8", "replace") if response.code == 200 else None


async def run_demo(
    plan: SimulationPlan,
    *,
    spawn_limit: int,
    start_delay: float,
    kubernetes: KubernetesTarget | None,
    work_dir: Path,
    keep_files: bool,
    keep_running: bool,
    as_json: bool,
    out: TextIO,
    chart: Path | None = None,
) -> int:
    """Start the hub, run the workshop, print the report, stop everything."""
    info = sys.stderr if as_json else out
    service_port = unused_port()
    config = hub_config(
        service_port=service_port,
        spawn_limit=spawn_limit,
        start_delay=start_delay,
        expected_concurrent_servers=plan.users,
        kubernetes=kubernetes,
    )
    env = {"KUBECONFIG": str(kubernetes.kubeconfig)} if kubernetes else None
    where = "the local Kubernetes cluster" if kubernetes else "simulated servers"
    print(
        f"Starting a local JupyterHub + configurable-http-proxy with hub-resilience switched "
        f"on ({where}, concurrent_spawn_limit {spawn_limit})...",
        file=info, flush=True,
    )
    async with local_hub(
        config, directory=work_dir, env=env, start_timeout=120,
        service_name="demo-admin", hub_class=LocalHub,
    ) as hub:
        service_metrics = f"http://127.0.0.1:{service_port}/metrics"
        await hub.wait_for_service(service_metrics)
        print(
            f"  hub                  {hub.url}/\n"
            f"  hub metrics          {hub.metrics_url}\n"
            f"  service metrics      {service_metrics}\n"
            f"  logs                 {hub.config_dir}"
            + ("" if keep_files else " (removed at the end; --work-dir keeps them)"),
            file=info, flush=True,
        )
        print(
            f"A workshop: {plan.users} students, {plan.describe_arrival()}; each works for "
            f"{plan.hold:g} s, stops the server and leaves a tab polling it "
            f"({plan.tab_requests} requests).",
            file=info, flush=True,
        )
        simulation = Simulation(
            hub.url, hub.token, plan, api_url=hub.api_url,
            # Recorded whatever --chart says: the progress line shows the hub's event loop
            # (and the Kubernetes API's 429s) from its readings.
            timeline=f"hub-resilience, {where}",
        )
        report = await simulation.run(progress_printer(sys.stderr))
        handled_text = await _fetch_text(service_metrics)
        handled = None if handled_text is None else stopped_responses(handled_text)
        emit_report(report, as_json=as_json, stream=out)
        for line in summary_lines(
            report, hub_metrics=hub.metrics_url, service_metrics=service_metrics,
            handled=handled,
        ):
            print(line, file=info)
        if chart is not None and simulation.timeline is not None:
            draw([simulation.timeline], chart,
                 title=f"demo: {plan.users} students, {plan.describe_arrival()}")
            print(f"  chart                {chart}", file=info, flush=True)
        if keep_running:
            print(
                "The hub keeps running with the workshop's metrics; Ctrl-C stops and removes it.",
                file=info, flush=True,
            )
            await asyncio.Event().wait()
    print("Stopped the hub, the proxy, the service and the simulated servers.", file=info,
          flush=True)
    return exit_status(report)


# -- the event on the local Kubernetes control plane -----------------------------------------


def _run_progress(name: str) -> Callable[[Progress], None]:
    print(f"{name}:", file=sys.stderr, flush=True)
    return progress_printer(sys.stderr)


async def run_event(plan: SimulationPlan, *, chart: Path | None, as_json: bool, out: TextIO
                    ) -> int:
    """The k8s-event benchmark's event with the plan's students and arrival, on a local
    control plane sized for them: stock z2jh 4.4 first, then hub-resilience; the
    benchmark's table."""
    k8s_event = _repository_module("benchmarks.k8s_event")
    common = _repository_module("benchmarks.common")
    if k8s_event is None or common is None:
        raise RuntimeError(
            "--kubernetes needs the repository checkout (tests/k8s, benchmarks/): run it "
            "from a clone after ./scripts/test, or give --kubeconfig of a cluster you started"
        )
    info = sys.stderr if as_json else out
    nodes = k8s_event.nodes_for(plan.users)
    event = k8s_event.Crowd(f"{plan.users} students, {plan.describe_arrival()}", plan.users,
                            plan.arrival, plan.ramp_seconds, plan.rate)
    print(f"The k8s-event benchmark's event at the demo's size: {event.title}, on a local "
          f"Kubernetes control plane of {nodes} fake nodes; stock z2jh 4.4, then "
          "hub-resilience (docs/benchmarks.md, \"An event on Kubernetes\")...",
          file=info, flush=True)
    rows = await k8s_event.run((event,), steady=EVENT_STEADY_SECONDS, nodes=nodes,
                               chart=chart, progress=_run_progress)
    if as_json:
        json.dump([asdict(row) for row in rows], out, indent=2)
        out.write("\n")
    else:
        print(common.markdown_table(rows), file=out)
    if chart is not None:
        print(f"  chart                {chart}", file=info, flush=True)
    missed = k8s_event.missed_goals(rows)
    for row in missed:
        print(f"hub-resilience missed: {row.measure}", file=sys.stderr)
    return EXIT_GOAL_MISSED if missed else 0


# -- the Kubernetes cluster -----------------------------------------------------------------


def _repository_module(name: str) -> Any:
    """Module ``name`` (``tests.k8s.cluster``, ``benchmarks.k8s_event``) from the repository
    checkout this package runs from, if any."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "tests" / "k8s" / "cluster.py").is_file():
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(name)


@contextmanager
def kubernetes_target(args: argparse.Namespace, work_dir: Path) -> Iterator[KubernetesTarget]:
    """The cluster given with --kubeconfig, or a local one started (and stopped) here."""
    if args.kubeconfig:
        path = Path(args.kubeconfig)
        if not path.is_file():
            raise RuntimeError(f"--kubeconfig {path} is not a file")
        yield KubernetesTarget(path.resolve(), args.namespace)
        return
    harness = _repository_module("tests.k8s.cluster")
    if harness is None:
        raise RuntimeError(
            "--kubernetes needs the local cluster harness of a repository checkout "
            "(tests/k8s/cluster.py), or --kubeconfig of a cluster you started"
        )
    print("Starting the local Kubernetes control plane (tests/k8s)...", flush=True)
    bin_dir = harness.build_binaries(work_dir / "k8s-build.log")
    cluster = harness.LocalCluster(
        work_dir=work_dir / "k8s", bin_dir=bin_dir, namespace=args.namespace
    )
    # Started from the main thread: the children's parent-death signal is tied to it.
    cluster.start()
    try:
        yield KubernetesTarget(cluster.kubeconfig, cluster.namespace)
    finally:
        cluster.stop()


# -- command line ---------------------------------------------------------------------------


def run_from_args(args: argparse.Namespace) -> int:
    """``hub-resilience demo``."""
    logging.basicConfig(level=logging.WARNING,
                        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    logging.getLogger("hub_resilience.tools.simulate.users").setLevel(logging.ERROR)
    if args.users is None:
        args.users = DEFAULT_KUBERNETES_USERS if args.kubernetes else DEFAULT_USERS
    try:
        plan = plan_from_args(args, user_prefix=default_plan(args.kubernetes).user_prefix)
        if args.spawn_limit < 0:
            raise ValueError(f"--spawn-limit must be >= 0 (0: no limit), not {args.spawn_limit}")
        if args.start_delay < 0:
            raise ValueError(f"--start-delay must be >= 0 seconds, not {args.start_delay}")
        if args.chart is not None:
            check_chart_path(args.chart)
    except (ValueError, ChartUnavailable) as e:
        print(f"hub-resilience demo: {e}", file=sys.stderr)
        return EXIT_SET_UP_FAILED
    if args.kubernetes and args.kubeconfig is None:
        return _run(lambda: run_event(plan, chart=args.chart, as_json=args.json,
                                      out=sys.stdout))
    own_dir = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="hub-resilience-demo-")) if own_dir else Path(
        args.work_dir
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _kubernetes_or_none(args, work_dir) as target:
            return asyncio.run(_main(run_demo(  # within the cluster's lifetime
                plan,
                out=sys.stdout,
                spawn_limit=args.spawn_limit,
                start_delay=args.start_delay,
                kubernetes=target,
                work_dir=work_dir / "hub",
                keep_files=not own_dir,
                keep_running=args.keep_running,
                as_json=args.json,
                chart=args.chart,
            )))
    except (RuntimeError, HubAPIError, OSError, KeyboardInterrupt) as e:
        return _failed(e)
    finally:
        if own_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def _run(work: Callable[[], Awaitable[int]]) -> int:
    """``work()`` run to its exit status; a set-up failure or an interruption reported."""
    try:
        return asyncio.run(_main(work()))
    except (RuntimeError, HubAPIError, OSError, KeyboardInterrupt) as e:
        return _failed(e)


def _failed(e: BaseException) -> int:
    if isinstance(e, KeyboardInterrupt):
        print("\nhub-resilience demo: interrupted; everything was stopped", file=sys.stderr)
        return 130
    print(f"hub-resilience demo: {e}", file=sys.stderr)
    return EXIT_SET_UP_FAILED


@contextmanager
def _kubernetes_or_none(
    args: argparse.Namespace, work_dir: Path
) -> Iterator[KubernetesTarget | None]:
    if not args.kubernetes:
        yield None
        return
    with kubernetes_target(args, work_dir) as target:
        yield target


async def _main(work: Awaitable[int]) -> int:
    """``work`` (the demo), with SIGTERM treated like Ctrl-C so everything is stopped either
    way."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="run a small workshop on a local hub with hub-resilience switched on",
        description="Start a local JupyterHub and configurable-http-proxy with hub-resilience "
        "switched on (hub_resilience.configure) and simulated single-user servers, run a "
        f"small workshop ({DEFAULT_USERS} students arriving at once, by default), print the "
        "report and where the metrics are, and clean everything up. Nothing to set up "
        "beyond the package and configurable-http-proxy (./scripts/demo does both).",
    )
    add_plan_arguments(parser, default_plan(kubernetes=False))
    # --users: DEFAULT_USERS, or DEFAULT_KUBERNETES_USERS with --kubernetes.
    parser.set_defaults(users=None)
    hub = parser.add_argument_group("the local hub")
    hub.add_argument("--spawn-limit", type=int, default=DEFAULT_SPAWN_LIMIT,
                     help=f"the hub's concurrent_spawn_limit (default {DEFAULT_SPAWN_LIMIT})")
    hub.add_argument("--start-delay", type=float, default=DEFAULT_START_DELAY,
                     help="seconds a simulated server takes to start "
                     f"(default {DEFAULT_START_DELAY:g})")
    hub.add_argument("--work-dir", default=None,
                     help="keep the hub's config, database and logs here (default: a "
                     "temporary directory, removed at the end)")
    hub.add_argument("--keep-running", action="store_true",
                     help="after the report, keep the hub running (to look at its metrics) "
                     "until Ctrl-C")
    k8s = parser.add_argument_group("Kubernetes")
    k8s.add_argument("--kubernetes", action="store_true",
                     help="run the k8s-event benchmark's event with --users students "
                     f"(default {DEFAULT_KUBERNETES_USERS}) and --arrival on a local "
                     "Kubernetes control plane (tests/k8s, started and stopped here): stock "
                     "z2jh 4.4, then hub-resilience, and print the benchmark's table; with "
                     "--kubeconfig, the workshop with ResilientKubeSpawner on that cluster")
    k8s.add_argument("--kubeconfig", default=None,
                     help="with --kubernetes: a running cluster's kubeconfig (e.g. from "
                     "`python -m tests.k8s.cluster up`) instead of starting one")
    k8s.add_argument("--namespace", default="hub",
                     help="with --kubernetes: the namespace for user pods (default hub)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_chart_argument(parser)
    parser.set_defaults(func=run_from_args)

