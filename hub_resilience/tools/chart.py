"""``--chart FILE``: a picture of one or more runs, side by side, drawn with matplotlib.

matplotlib is an extra (``pip install 'hub-resilience[chart]'``), kept out of the hub image's
install: only the operator tools that draw import it, and only when asked to. The picture's
format follows the file's suffix (``.png``, ``.svg``, ``.pdf``). docs/benchmarks.md ("Charts").
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hub_resilience.tools.timeline import Timeline, loop_series

#: What ``pip install`` needs for charts.
EXTRA = "hub-resilience[chart]"

#: The users' lines: (field of UsersAt, legend, colour).
USER_LINES = (
    ("ready", "ready", "tab:green"),
    ("pending", "pending", "tab:orange"),
    ("refused", "refused (waiting out a 429)", "tab:red"),
    ("failed", "failed", "tab:gray"),
)


def add_chart_argument(group: Any) -> None:
    """``--chart FILE``, the same for every command that draws."""
    group.add_argument(
        "--chart", type=Path, default=None, metavar="FILE",
        help="also draw the run (users ready, pending and refused over time, and the hub's "
        "event-loop interval) to FILE (.png, .svg or .pdf); needs matplotlib: "
        f"pip install '{EXTRA}'",
    )


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed, or cannot write that kind of file."""


def check_chart_path(path: Path) -> None:
    """Fail before a run, not after it, when its chart could not be written: matplotlib
    missing, a format it does not know, or a folder that does not exist."""
    figure_class = _figure_class()
    formats = figure_class().canvas.get_supported_filetypes()
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in formats:
        known = ", ".join(f".{f}" for f in sorted(formats))
        raise ChartUnavailable(f"--chart {path}: the file name must end in one of {known}")
    if not path.parent.is_dir():
        raise ChartUnavailable(f"--chart {path}: folder {path.parent} does not exist")


def draw(timelines: Sequence[Timeline], path: Path, *, title: str) -> None:
    """Draw each run as a column (users over time above, the hub's event-loop interval
    below, the same scales in every column) and write it to ``path``."""
    if not timelines:
        raise ValueError("nothing to draw: no run was recorded")
    figure = _figure_class()(figsize=(6.0 * len(timelines), 7.0), layout="constrained")
    axes = figure.subplots(2, len(timelines), sharex="col", sharey="row", squeeze=False)
    figure.suptitle(title)
    for column, timeline in enumerate(timelines):
        users, loop = axes[0][column], axes[1][column]
        elapsed = [u.elapsed for u in timeline.users]
        for name, legend, colour in USER_LINES:
            users.plot(elapsed, [getattr(u, name) for u in timeline.users], label=legend,
                       color=colour, linewidth=1.5)
        users.set_title(timeline.label)
        users.set_ylabel("users")
        users.grid(True, alpha=0.3)
        users.legend(loc="upper left", fontsize="small")
        times, p99 = loop_series(timeline)
        loop.plot(times, p99, color="tab:blue", marker=".", linewidth=1.0,
                  label="event-loop interval p99")
        loop.set_ylabel("hub event-loop interval p99 (ms)")
        loop.set_xlabel("seconds since the first arrival")
        loop.grid(True, alpha=0.3)
        if not times:
            loop.text(0.5, 0.5, "no reading of the hub's metrics", ha="center",
                      va="center", transform=loop.transAxes)
    figure.savefig(path)


def _figure_class() -> type:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ChartUnavailable(
            f"--chart needs matplotlib, an extra of this package: pip install '{EXTRA}'"
        ) from None
    return Figure
