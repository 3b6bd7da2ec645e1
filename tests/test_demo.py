"""``hub-resilience demo`` end to end: a real local JupyterHub, configurable-http-proxy and the
resilience service, a small workshop, the report, and nothing left running afterwards.

The single-user servers are simulated (SimulatedSpawner), as in the demo itself.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def session_members(session_id: int) -> list[str]:
    """Command lines of the processes in a session (any descendant that did not setsid)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # exited meanwhile
        # Fields after the command name: state, ppid, pgrp, session, ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == session_id:
            members.append(f"{entry.name}: {cmdline}")
    return members


def exists(path: str) -> bool:
    return Path(path).exists()


@pytest.mark.hub
async def test_demo_runs_a_workshop_reports_and_cleans_up(tmp_path: Path) -> None:
    chart = tmp_path / "workshop.png"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub_resilience", "demo",
        "--users", "20", "--start-delay", "0.2", "--hold", "1", "--activity-interval", "0.5",
        "--tab-requests", "2", "--tab-interval", "0.1", "--chart", str(chart),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        # Its own session: every process it starts (hub, proxy, service, responder) is found
        # by session id afterwards, wherever it was reparented.
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 600)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    out = stdout.decode()
    assert process.returncode == 0, out + stderr.decode()

    assert "with hub-resilience switched on" in out
    assert "ready                20 of 20" in out
    assert re.search(r"time to ready        p50 [\d.]+ s   p90 [\d.]+ s   p99 [\d.]+ s", out)
    assert "failures             none" in out
    # Every 429 the hub sent was absorbed by the client (the governor may cut the limit of 20
    # below the burst when the hub's loop lags, as JupyterHub 5.5 does under 20 spawns).
    absorbed = re.search(r"429s absorbed +(\d+) \(", out)
    assert absorbed, out
    assert re.search(
        rf"hub served +\d+ requests, {absorbed[1]} of them 429, hub CPU [\d.]+ s", out
    ), out
    assert "tab requests         40 after the stop (424: 40)" in out
    # The open tabs went to the stopped-server handler through the proxy, not to the hub.
    assert "40 answered by the stopped-server handler, 0 reached the hub" in out
    hub_metrics = re.search(r"hub metrics +(http://127\.0\.0\.1:\d+/hub/metrics)", out)
    service_metrics = re.search(r"service metrics +(http://127\.0\.0\.1:\d+/metrics)", out)
    assert hub_metrics and service_metrics
    assert "Stopped the hub" in out
    # --chart: the picture of the run is written, and kept (it is not among the demo's files).
    assert re.search(rf"chart +{re.escape(str(chart))}", out), out
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # Cleaned up: no process of the demo's session is left, and its files are gone.
    leftovers = session_members(process.pid)
    for _ in range(50):  # processes told to stop may take a moment to go (a safety net)
        if not leftovers:
            break
        await asyncio.sleep(0.1)
        leftovers = session_members(process.pid)
    assert leftovers == []
    logs = re.search(r"logs +(\S+)", out)
    assert logs is not None
    assert not exists(logs.group(1))


def test_demo_refuses_bad_input_naming_the_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hub_resilience", "demo", "--users", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "users must be a whole number >= 1" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "hub_resilience", "demo", "--spawn-limit", "-1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "--spawn-limit must be >= 0" in result.stderr
    # A chart that could not be written is refused before any hub starts.
    result = subprocess.run(
        [sys.executable, "-m", "hub_resilience", "demo", "--chart", "/nonexistent/run.png"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "--chart /nonexistent/run.png: folder /nonexistent does not exist" in result.stderr
    assert "Starting" not in result.stdout


def test_demo_and_simulate_have_help() -> None:
    for command in ("demo", "simulate"):
        result = subprocess.run(
            [sys.executable, "-m", "hub_resilience", command, "--help"],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0
        assert f"usage: hub-resilience {command}" in result.stdout
        assert "--chart FILE" in result.stdout
