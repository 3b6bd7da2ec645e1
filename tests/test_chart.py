"""--chart: the picture matplotlib draws of one or more runs (no hub; the runs are made up)."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from hub_resilience.tools.chart import ChartUnavailable, check_chart_path, draw
from hub_resilience.tools.timeline import LoopAt, Timeline, UsersAt


def run(label: str, ready_at: int) -> Timeline:
    users = [
        UsersAt(float(t), min(t, ready_at) * 10, max(0, 100 - 10 * t), 0, 0) for t in range(12)
    ]
    return Timeline(label, users, [LoopAt(5.0, 0.08, 0.25), LoopAt(10.0, 0.02, 0.05)])


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    return width, height


def test_runs_are_drawn_side_by_side(tmp_path: Path) -> None:
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    draw([run("hub-resilience", 8)], one, title="300 users at once")
    draw([run("stock", 11), run("hub-resilience", 8)], two, title="300 users at once")
    # A column per run, 6 inches wide at matplotlib's 100 dpi; the same height.
    (w1, h1), (w2, h2) = png_size(one), png_size(two)
    assert (w1, h1) == (600, 700)
    assert (w2, h2) == (1200, 700)


def test_a_run_without_readings_of_the_hub_still_draws(tmp_path: Path) -> None:
    path = tmp_path / "run.svg"
    draw([Timeline("no metrics", [UsersAt(0.0, 0, 1, 0, 0), UsersAt(1.0, 1, 0, 0, 0)])],
         path, title="t")
    assert path.read_text().lstrip().startswith("<?xml")


def test_nothing_to_draw_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to draw"):
        draw([], tmp_path / "x.png", title="t")


def test_the_path_is_checked_before_a_run(tmp_path: Path) -> None:
    check_chart_path(tmp_path / "ok.pdf")
    with pytest.raises(ChartUnavailable, match=r"must end in one of .*\.png.*\.svg"):
        check_chart_path(tmp_path / "chart.txt")
    with pytest.raises(ChartUnavailable, match="does not exist"):
        check_chart_path(tmp_path / "missing" / "chart.png")


def test_without_matplotlib_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(ChartUnavailable, match=r"pip install 'hub-resilience\[chart\]'"):
        check_chart_path(tmp_path / "chart.png")
