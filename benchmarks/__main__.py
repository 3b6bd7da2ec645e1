"""``python -m benchmarks``: run every benchmark and print one markdown table.

Each comparison is measured in the same run, on the same machine, one configuration after
the other (never at the same time: they would compete for the cores), and reported as a
ratio. Progress goes to stderr, the table (with the machine and versions) to stdout, so
``python -m benchmarks > results.md`` keeps just the results. ``./benchmarks/run`` sets up the
environment first. See docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchmarks import (
    activity_load,
    admission,
    culling,
    k8s_event,
    route_check,
    spawn_burst,
    stopped_storm,
)
from benchmarks.common import Row, log, markdown_table
from hub_resilience.tools.chart import ChartUnavailable, add_chart_argument, check_chart_path

Run = Callable[[], Awaitable[list[Row]]]
ChartedRun = Callable[[Path | None], Awaitable[list[Row]]]

#: name -> (full-size run, a quick smoke-sized run)
BENCHMARKS: dict[str, tuple[Run, Run]] = {
    "stopped-storm": (
        stopped_storm.run, lambda: stopped_storm.run(users=20, requests=500, navigations=20)
    ),
    "culling": (culling.run, lambda: culling.run(users=500, servers=100)),
    "activity": (activity_load.run,
                 lambda: activity_load.run(servers=100, budget=0.2, speedup=120)),
    "spawn-burst": (spawn_burst.run, lambda: spawn_burst.run(users=60, spawn_limit=5)),
    "admission": (admission.run, admission.quick),
    "route-check": (route_check.run, lambda: route_check.run(sizes=(100,), repeats=3)),
}
#: Benchmarks that draw their runs with --chart: name -> (full-size run, quick run).
CHARTED: dict[str, tuple[ChartedRun, ChartedRun]] = {
    "k8s-event": (lambda chart: k8s_event.run(chart=chart), k8s_event.quick),
}


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for package in ("jupyterhub", "jupyterhub-idle-culler", "hub-resilience", "tornado"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} (not installed)")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", action="append", choices=[*BENCHMARKS, *CHARTED],
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, for checking that the benchmarks work (the figures "
                        "mean little)")
    add_chart_argument(parser)
    args = parser.parse_args(argv)
    if args.chart is not None:
        try:
            check_chart_path(args.chart)
        except ChartUnavailable as e:
            parser.error(str(e))
    logging.basicConfig(level=logging.WARNING,
                        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    names = args.only or [*BENCHMARKS, *CHARTED]
    if args.chart is not None and not set(names) & set(CHARTED):
        parser.error(f"--chart draws only {', '.join(CHARTED)}, which this run leaves out")
    started = time.monotonic()
    rows: list[Row] = []
    timings = []
    for name in names:
        begun = time.monotonic()
        if name in CHARTED:
            charted_full, charted_quick = CHARTED[name]
            rows += asyncio.run((charted_quick if args.quick else charted_full)(args.chart))
        else:
            full, quick = BENCHMARKS[name]
            rows += asyncio.run((quick if args.quick else full)())
        timings.append(f"{name} {time.monotonic() - begun:.0f} s")
        log(f"{name} done in {time.monotonic() - begun:.0f} s")
    total = time.monotonic() - started
    command = "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(markdown_table(rows, baseline="baseline", ours="hub-resilience"))
    print()
    print(f"Command: `{command.strip()}`; {time.strftime('%Y-%m-%d')}; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {versions()}; "
          f"took {total / 60:.1f} min ({', '.join(timings)}).")
    if "k8s-event" in names:
        print(f"The k8s-event hubs ran on the released stack: {k8s_event.hub_stack()}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
