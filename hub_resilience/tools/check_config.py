"""``hub-resilience check-config``: check z2jh helm values before a ``helm upgrade``.

Why: z2jh's hub Deployment uses the Recreate strategy, so the old hub is gone before the new
one has read its configuration; a value the new hub refuses is an outage, found only when it
happens. This command runs z2jh's own hub configuration (:mod:`hub_resilience.tools.z2jh_chart`)
with the values merged into the chart's defaults as helm merges them, offline, then the
package's checks on the Config it builds, and reports every problem it finds, one line each:

- z2jh's configuration failing or exiting (a bad ``hub.config`` section name), and
  ``configure()`` refusing the combination (two cullers, a hand-made ``/user/`` route, a
  misspelt ``HubResilience`` setting, ...): the hub would not start;
- a user pod that the spawner's QoS policy cannot make Guaranteed, for the default pod or
  for each profile of ``singleuser.profileList`` and each choice of its options: those spawns
  would fail;
- a misspelt ``ResilientKubeSpawner`` setting, which the spawner would ignore.

z2jh's configuration has process-wide side effects (it switches tornado's HTTP client to
curl, imports ``z2jh`` by name, prints), so it runs in a subprocess of its own
(``python -m hub_resilience.tools.check_config REQUEST``, :func:`worker_main`), which writes a
JSON report; the spawner there uses an offline kubeconfig (no API call is made).

Exit codes: 0 no problem (a summary of what would be wired is printed), 1 problems (one line
each), 2 unusable arguments (a missing or unreadable values file, bad YAML, no chart files).
"""
from __future__ import annotations

import argparse
import asyncio
import difflib
import importlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from unittest import mock

import yaml

from hub_resilience.configure import ConfigureCall, last_call
from hub_resilience.tools.z2jh_chart import (
    Chart,
    ChartNotFoundError,
    default_chart,
    find_chart,
    load_config,
    released_values,
)

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_BAD_INPUT = 2

#: Seconds the subprocess may take to run z2jh's configuration and the checks.
DEFAULT_TIMEOUT = 120.0

#: The module run as the subprocess (this one, see :func:`worker_main`).
WORKER_MODULE = "hub_resilience.tools.check_config"

#: A kubeconfig KubeSpawner can load without a cluster (it loads one when a spawner is made,
#: even though building pod manifests makes no API call); the server is a closed port.
OFFLINE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: offline
  cluster: {server: "https://127.0.0.1:9", insecure-skip-tls-verify: true}
users:
- name: offline
  user: {token: not-used}
contexts:
- name: offline
  context: {cluster: offline, user: offline, namespace: default}
current-context: offline
"""

#: JupyterHub's defaults for what the summary shows when the config leaves it unset.
JUPYTERHUB_DEFAULT_RESOLUTION = 30
JUPYTERHUB_DEFAULT_SPAWN_LIMIT = 100
SINGLEUSER_DEFAULT_INTERVAL = 300


class BadInput(Exception):
    """An argument check-config cannot use (exit 2)."""


class WorkerError(Exception):
    """The subprocess did not produce a report (exit 2)."""


@dataclass
class Report:
    """What the subprocess found: problems (one line each) and, when there are none, what
    would be wired, as (what, how) pairs."""

    problems: list[str] = field(default_factory=list)
    summary: list[tuple[str, str]] = field(default_factory=list)

    def add(self, problem: str) -> None:
        """Add a problem as one line, unless an earlier problem already says it (a setting
        refused by configure() is refused by the spawner too)."""
        line = one_line(problem)
        if not any(line in earlier for earlier in self.problems):
            self.problems.append(line)

    def to_json(self) -> dict[str, Any]:
        return {"problems": self.problems, "summary": [list(item) for item in self.summary]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        return cls(
            problems=[str(p) for p in data.get("problems", [])],
            summary=[(str(k), str(v)) for k, v in data.get("summary", [])],
        )


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# -- the command ------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``check-config`` subcommand."""
    parser = subparsers.add_parser(
        "check-config",
        help="check z2jh helm values before a helm upgrade (runs z2jh's hub configuration)",
        description=(
            "Run zero-to-jupyterhub's own hub configuration with these values merged into the "
            "chart's defaults (as `helm upgrade -f ... -f ...` merges them), offline, and the "
            "package's checks on the result: every problem that would keep the new hub from "
            "starting (z2jh's Deployment replaces the old hub first) or make spawns fail. "
            "Exit 0: no problem (prints what would be wired); 1: problems, one line each; "
            "2: unusable arguments."
        ),
    )
    parser.add_argument(
        "values", nargs="+", metavar="VALUES.yaml",
        help="helm values files, in the order `helm -f` would take them",
    )
    parser.add_argument(
        "--chart", metavar="DIR",
        help="the z2jh chart's files: an unpacked chart (`helm pull jupyterhub/jupyterhub "
        "--version 4.4.0 --untar`) or a folder with jupyterhub_config.py, z2jh.py and "
        "values.yaml (default: $HUB_RESILIENCE_Z2JH_DIR/4.4.0, or a shared/z2jh/4.4.0 in the "
        "current folder, the package's or one above them)",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help=f"longest the check may take (default {DEFAULT_TIMEOUT:g})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, stdout: TextIO | None = None,
        stderr: TextIO | None = None) -> int:
    """Check the values; print the summary or the problems; return the exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        overlays = load_values_files(args.values)
        chart = find_chart(args.chart) if args.chart else default_chart()
        values = released_values(*overlays, chart=chart)
        report = run_worker(chart, values, timeout=args.timeout)
    except (BadInput, ChartNotFoundError, WorkerError) as e:
        print(f"hub-resilience check-config: error: {e}", file=stderr)
        return EXIT_BAD_INPUT
    print(format_report(report, args.values, chart), file=stdout)
    return EXIT_PROBLEMS if report.problems else EXIT_OK


def load_values_files(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Each values file as a mapping (an empty file is an empty mapping)."""
    overlays = []
    for path in paths:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise BadInput(f"{path}: no such file") from None
        except OSError as e:
            raise BadInput(f"{path}: cannot read it: {e.strerror or e}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BadInput(f"{path}: not valid YAML: {one_line(str(e))}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise BadInput(
                f"{path}: helm values must be a mapping at the top, got {type(data).__name__}"
            )
        overlays.append(data)
    return overlays


def format_report(report: Report, paths: Sequence[str], chart: Chart) -> str:
    where = f"values {', '.join(paths)}; z2jh chart {chart.folder}"
    if report.problems:
        count = len(report.problems)
        lines = [f"hub-resilience check-config: {count} problem{'s' if count > 1 else ''} "
                 f"({where}):"]
        lines += [f"  - {problem}" for problem in report.problems]
        return "\n".join(lines)
    lines = [f"hub-resilience check-config: no problems ({where})"]
    width = max((len(what) for what, _ in report.summary), default=0)
    lines += [f"  {what + ':':<{width + 1}} {how}" for what, how in report.summary]
    return "\n".join(lines)


def run_worker(chart: Chart, values: Mapping[str, Any], timeout: float) -> Report:
    """Run the checks in a subprocess of their own and read its report."""
    import hub_resilience

    package_root = str(Path(hub_resilience.__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory(prefix="hub-resilience-check-") as tmp:
        work = Path(tmp)
        (work / "values.yaml").write_text(yaml.safe_dump(dict(values)))
        (work / "kubeconfig").write_text(OFFLINE_KUBECONFIG)
        request = {
            "chart": chart.to_json(),
            "values": str(work / "values.yaml"),
            "workdir": str(work / "hub"),
            "report": str(work / "report.json"),
        }
        (work / "request.json").write_text(json.dumps(request))
        env = dict(os.environ)
        env["KUBECONFIG"] = str(work / "kubeconfig")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH")) if p
        )
        try:
            result = subprocess.run(
                [sys.executable, "-m", WORKER_MODULE, str(work / "request.json")],
                cwd=work, env=env, capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise WorkerError(
                f"z2jh's configuration did not finish within {timeout:g} s (--timeout); does "
                "hub.extraConfig wait for something?"
            ) from None
        report_path = work / "report.json"
        if result.returncode != 0 or not report_path.is_file():
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise WorkerError(
                f"the check itself failed (exit {result.returncode}), so nothing was "
                f"checked:\n{tail}"
            )
        return Report.from_json(json.loads(report_path.read_text()))


# -- the subprocess ---------------------------------------------------------------------------


def worker_main(argv: Sequence[str]) -> int:
    """``python -m hub_resilience.tools.check_config REQUEST``: check the request's values
    with its chart and write the report where it says (a JSON file written by run_worker)."""
    [request_path] = argv
    request = json.loads(Path(request_path).read_text())
    values = yaml.safe_load(Path(request["values"]).read_text())
    report = asyncio.run(
        check_values(Path(request["workdir"]), values, Chart.from_json(request["chart"]))
    )
    Path(request["report"]).write_text(json.dumps(report.to_json()))
    return 0


@contextmanager
def curl_optional() -> Iterator[None]:
    """Where pycurl is missing (an operator's laptop, not the hub image), z2jh's switch of
    tornado's HTTP client to curl is skipped: it does not change the configuration."""
    if importlib.util.find_spec("pycurl") is not None:
        yield
        return
    from tornado.httpclient import AsyncHTTPClient

    with mock.patch.object(AsyncHTTPClient, "configure", lambda *args, **kwargs: None):
        yield


def exit_problem(error: SystemExit, output: str) -> str:
    """The problem of z2jh's configuration exiting, with its FATAL message when it printed
    one (a bad ``hub.config`` section name)."""
    fatal = [line for line in output.splitlines() if line.startswith("FATAL:")]
    if fatal:
        return f"the hub would not start: z2jh: {fatal[-1].removeprefix('FATAL:').strip()}"
    return f"the hub would not start: z2jh's configuration exits with status {error.code}"


def config_location(error: BaseException, etc: Path | None = None) -> str | None:
    """Where in the hub's configuration files ``error`` was raised, if there: z2jh's own
    files (under ``etc``), a drop-in of jupyterhub_config.d (compiled with its bare name) or
    ``hub.extraConfig`` (exec'd from a string)."""
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        name = frame.filename
        if name == "<string>":
            return f"in hub.extraConfig, line {frame.lineno}"
        if etc is not None and name.startswith(str(etc) + os.sep):
            return f"in {Path(name).relative_to(etc)}, line {frame.lineno}"
        if not os.path.isabs(name) and name.endswith(".py"):
            return f"in jupyterhub_config.d/{name}, line {frame.lineno}"
    return None


def describe_exception(error: BaseException, etc: Path | None = None) -> str:
    """One line for an exception: configure()'s own message as it is; anything else with its
    type and, when known, where in the configuration it was raised (no traceback)."""
    from hub_resilience.settings import ConfigurationError

    if isinstance(error, ConfigurationError):
        return str(error)
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    where = config_location(error, etc)
    return text + (f" ({where})" if where else "")


def load(workdir: Path, values: Mapping[str, Any], chart: Chart,
         report: Report) -> tuple[Any, ConfigureCall | None]:
    """z2jh's Config for ``values`` (None when it could not be built far enough to check
    more) and the configure() call it made; problems go into ``report``."""
    etc = workdir / "etc"
    output = io.StringIO()
    before = last_call()
    with curl_optional():
        try:
            with redirect_stdout(output), redirect_stderr(output):
                config = load_config(workdir, values, chart)
        except SystemExit as e:
            report.add(exit_problem(e, output.getvalue()))
            config = None
        except Exception as e:
            report.add(f"the hub would not start: {describe_exception(e, etc)}")
            config = None
    call = last_call()
    if call is before:  # the drop-in did not call configure()
        call = None
    if config is None and call is not None and call.error is not None:
        # configure() refused: z2jh's own configuration had run, so the spawner's checks
        # still apply to what it built (only hub.extraConfig, which runs later, is missing).
        config = call.config
    return config, call


def unknown_settings(c: Any, section: str = "ResilientKubeSpawner") -> list[str]:
    """Problems for settings in ``c[section]`` that the spawner does not have (traitlets
    would only warn, and the spawner would run with its default)."""
    from hub_resilience.hub.spawner import ResilientKubeSpawner

    if section not in c:
        return []
    valid = sorted(ResilientKubeSpawner.class_trait_names(config=True))
    problems = []
    for name in sorted(set(c[section]) - set(valid)):
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(
            f"{section}.{name} is not a setting of ResilientKubeSpawner{hint}; the spawner "
            "would ignore it"
        )
    return problems


def configured_spawner(c: Any, call: ConfigureCall | None) -> Any:
    """The spawner class the hub would use: the configured one, or, when configure()
    refused the values, the one it would have set."""
    from traitlets import TraitError

    from hub_resilience.configure import _get, _section
    from hub_resilience.settings import HubResilience

    if call is not None and call.error is not None:
        try:
            settings = HubResilience(config=c)
        except TraitError:
            return None
        if settings.enabled and settings.spawner_class is not None:
            return settings.spawner_class
    return _get(_section(c, "JupyterHub"), "spawner_class") or (
        "jupyterhub.spawner.LocalProcessSpawner"
    )


def resolve_spawner_class(value: Any) -> type | None:
    """The class a ``JupyterHub.spawner_class`` value names (an entry point name, as
    JupyterHub looks it up, or an import string), or None if it cannot be imported here."""
    from importlib.metadata import entry_points

    from traitlets.utils.importstring import import_item

    if isinstance(value, type):
        return value
    if not isinstance(value, str):
        return None
    try:
        for entry_point in entry_points(group="jupyterhub.spawners"):
            if entry_point.name.lower() == value.lower():
                loaded = entry_point.load()
                return loaded if isinstance(loaded, type) else None
        loaded = import_item(value)
    except Exception:
        return None
    return loaded if isinstance(loaded, type) else None


@dataclass(frozen=True)
class PodCase:
    """A user pod to build: the default one, or a profile with one choice of its options."""

    label: str
    user_options: dict[str, str]
    choice: str | None = None
    """The options' choices, for messages: ``option=choice``, or the defaults (``size=s,
    the default``) when the profile is built as it comes."""


def pod_cases(profile_list: Sequence[Mapping[str, Any]]) -> tuple[list[PodCase], list[str]]:
    """The pods to build for an initialized profile list (KubeSpawner's: slugs and default
    choices filled in), and notes on profiles that cannot be built without a user's input.

    Each profile is built with its default choices, then once for every other choice of
    each option (the other options at their defaults); without a profile list, the one
    default pod. (Where no choice is marked default, KubeSpawner takes the first; helm's
    ``toYaml`` sorts the keys of the values it hands the hub, so that is the first in
    alphabetical order, and so is it here.)
    """
    if not profile_list:
        return [PodCase("the default pod", {})], []
    cases: list[PodCase] = []
    notes: list[str] = []
    for profile in profile_list:
        slug = str(profile["slug"])
        options: Mapping[str, Any] = profile.get("profile_options") or {}
        free = [name for name, option in options.items() if not (option or {}).get("choices")]
        if free:
            notes.append(
                f"profile '{slug}' not checked: option {', '.join(free)} has only a "
                "free-form choice"
            )
            continue
        defaults = [
            f"{name}={choice}" for name, option in options.items()
            for choice, spec in option["choices"].items() if (spec or {}).get("default")
        ]
        cases.append(PodCase(
            f"profile '{slug}'", {"profile": slug},
            choice=f"{', '.join(defaults)}, the default" if defaults else None,
        ))
        for name, option in options.items():
            for choice, spec in option["choices"].items():
                if not (spec or {}).get("default"):
                    cases.append(PodCase(
                        f"profile '{slug}' with {name}={choice}",
                        {"profile": slug, name: str(choice)},
                        choice=f"{name}={choice}",
                    ))
    return cases, notes


@dataclass
class PodsChecked:
    """What the pod checks saw, for the summary."""

    built: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    singleuser_interval: str | None = None


async def check_pods(spawner_class: type, c: Any, report: Report) -> PodsChecked:
    """Build every user pod the profiles allow with ``spawner_class`` (a KubeSpawner) from
    ``c``, as a spawn would: ``load_user_options`` then ``get_pod_manifest``. A pod the QoS
    policy cannot make Guaranteed, or that cannot be built, is a problem naming it."""
    from jupyterhub.utils import maybe_future

    from hub_resilience.hub.qos import QoSError

    checked = PodsChecked()
    name = spawner_class.__name__
    try:
        base = spawner_class(_mock=True, config=c)
    except Exception as e:
        report.add(f"spawns would fail: {name} refuses its settings: {describe_exception(e)}")
        return checked
    try:
        interval = base.get_env().get("JUPYTERHUB_ACTIVITY_INTERVAL")
        checked.singleuser_interval = str(interval) if interval else None
        profile_list = base._sorted_dict_values(base.profile_list)
        if callable(profile_list):
            profile_list = await maybe_future(profile_list(base))
        profile_list = base._get_initialized_profile_list(profile_list or [])
    except Exception as e:
        report.add(f"spawns would fail: singleuser.profileList: {describe_exception(e)}")
        return checked
    cases, checked.notes = pod_cases(profile_list)
    for case in cases:
        try:
            spawner = spawner_class(_mock=True, config=c)
            spawner.user_options = dict(case.user_options)
            await spawner.load_user_options()
            await spawner.get_pod_manifest()
        except QoSError as e:
            with_choice = f" (with {case.choice})" if case.choice else ""
            report.add(f"spawns would fail: {e}{with_choice}")
        except Exception as e:
            report.add(f"spawns would fail: {case.label}: {describe_exception(e)}")
        else:
            checked.built.append(case.label)
    return checked


def _flag(command: Sequence[Any], name: str) -> str | None:
    prefix = f"--{name}="
    for part in command:
        if str(part).startswith(prefix):
            return str(part)[len(prefix):]
    return None


def summarize(c: Any, call: ConfigureCall | None, spawner: Any, spawner_class: type | None,
              pods: PodsChecked | None) -> list[tuple[str, str]]:
    """What the hub would be wired with, read from the finished Config."""
    from hub_resilience.configure import (
        STOCK_CULLER_NAMES,
        _get,
        _items,
        _section,
        read_culler_plan,
    )
    from hub_resilience.hub.spawner import ResilientKubeSpawner
    from hub_resilience.settings import HubResilience

    hub = _section(c, "JupyterHub")
    settings = HubResilience(config=c)
    summary: list[tuple[str, str]] = []
    if call is None:
        state = ("not wired: nothing ran configure() (the drop-in of "
                 "helm-values/hub-resilience.yaml, in hub.extraFiles, does)")
    elif call.wiring is None:
        state = "off (HubResilience.enabled: false); configure() left z2jh's configuration as it is"
    else:
        state = "on"
    summary.append(("hub-resilience", state))

    spawner_name = spawner if isinstance(spawner, str) else getattr(spawner, "__name__", spawner)
    if spawner_class is not None and issubclass(spawner_class, ResilientKubeSpawner):
        qos = _section(c, "ResilientKubeSpawner")
        how = (f"{spawner_name} (Guaranteed QoS: qos_mode {_get(qos, 'qos_mode') or 'guaranteed'},"
               f" qos_policy {_get(qos, 'qos_policy') or 'raise-requests'})")
    else:
        how = f"{spawner_name} (not resilient-kubespawner: user pods' QoS is not enforced)"
    summary.append(("spawner", how))
    if pods is not None:
        built = ", ".join(pods.built) or "none"
        summary.append(("user pods", f"built: {built}" + "".join(f"; {n}" for n in pods.notes)))
    elif spawner is not None:
        summary.append(("user pods", "not checked (not a KubeSpawner, or not importable here)"))

    # The service as configure() wired it (in "container" mode the hub's service entry has
    # no command: the hub pod's sidecar runs it).
    wiring = call.wiring if call is not None else None
    command = list(getattr(wiring, "command", None) or [])
    if command:
        ip = _flag(command, "ResilienceService.ip")
        port = _flag(command, "ResilienceService.port")
        mode = getattr(wiring, "service_mode", "managed")
        summary.append((
            "service",
            f"{settings.service_name} on {ip or '*'}:{port}"
            + ("" if mode == "managed" else f" ({mode} mode)"),
        ))
    else:
        summary.append(("service", "none"))

    routes: dict[str, str] = {}
    for section in ("Proxy", "ConfigurableHTTPProxy"):
        routes.update(_items(_section(c, section), "extra_routes", {}))
    summary.append(("route", "; ".join(f"{s} -> {t}" for s, t in routes.items()) or "none"))

    services = [s for s in _items(hub, "services", []) if isinstance(s, Mapping)]
    stock = [s for s in services if s.get("name") in STOCK_CULLER_NAMES]
    if _flag(command, "ResilienceService.cull") == "True":
        timeout = read_culler_plan(c).timeout
        summary.append(("culler", f"hub-resilience's, in the service: timeout {timeout:g} s"))
    elif stock:
        timeout_flag = _flag(stock[0].get("command") or [], "timeout")
        summary.append(("culler", f"{stock[0]['name']} (z2jh's cull.enabled): timeout "
                                  f"{timeout_flag + ' s' if timeout_flag else 'its default'}"))
    else:
        summary.append(("culler", "none"))

    resolution = _get(hub, "activity_resolution") or JUPYTERHUB_DEFAULT_RESOLUTION
    singleuser = pods.singleuser_interval if pods else None
    summary.append((
        "activity",
        f"hub every {_get(hub, 'last_activity_interval')} s, single-user every "
        f"{singleuser or SINGLEUSER_DEFAULT_INTERVAL} s"
        f"{'' if singleuser else ' (its default)'}, resolution {resolution} s",
    ))
    concurrent = _get(hub, "concurrent_spawn_limit")
    active = _get(hub, "active_server_limit")
    summary.append((
        "spawn limits",
        f"concurrent_spawn_limit "
        f"{concurrent if concurrent is not None else JUPYTERHUB_DEFAULT_SPAWN_LIMIT}, "
        f"active_server_limit {active or 'none'}",
    ))
    return summary


async def check_values(workdir: Path, values: Mapping[str, Any], chart: Chart) -> Report:
    """Run z2jh's configuration for ``values`` and every check on what it builds."""
    report = Report()
    c, call = load(workdir, values, chart, report)
    if c is None:
        return report
    for problem in unknown_settings(c):
        report.add(problem)
    spawner = configured_spawner(c, call)
    cls = None if spawner is None else resolve_spawner_class(spawner)
    pods = None
    if cls is not None:
        from kubespawner import KubeSpawner

        if issubclass(cls, KubeSpawner):
            pods = await check_pods(cls, c, report)
    if not report.problems:
        try:
            report.summary = summarize(c, call, spawner, cls, pods)
        except Exception as e:  # the values passed; only the summary failed
            report.summary = [("summary", f"not available: {describe_exception(e)}")]
    return report


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
