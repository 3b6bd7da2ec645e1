"""``hub-resilience check-config``: z2jh 4.4.0's own hub configuration run for real (in its
subprocess, no mocks) on the shipped helm values and on values with a mistake in them, each
mistake reported on one line naming it; and the pure parts (profile cases, messages, the
chart lookup) on their own."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hub_resilience.tools import check_config, cli, z2jh_chart
from hub_resilience.tools.check_config import PodCase, Report, pod_cases
from tests.z2jh_hub import released_chart

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "helm-values" / "hub-resilience.yaml"
EVENT = ROOT / "helm-values" / "event.yaml"

REFUSE = {"hub": {"config": {"ResilientKubeSpawner": {"qos_policy": "refuse"}}}}
BURSTABLE_PROFILE = {
    "singleuser": {
        "profileList": [
            {"display_name": "Small", "slug": "small", "default": True},
            {
                "display_name": "Big",
                "slug": "big",
                "kubespawner_override": {"cpu_guarantee": 0.5, "cpu_limit": 1},
            },
        ]
    }
}


@pytest.fixture(autouse=True)
def chart_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command finds the chart files the way an operator's checkout would point at them
    (HUB_RESILIENCE_Z2JH_DIR), wherever this clone is: the test suite's own lookup gives the
    folder (a fresh clone elsewhere has no shared/z2jh above it)."""
    monkeypatch.setenv(z2jh_chart.Z2JH_DIR_ENV, str(released_chart().parent))


def write(tmp_path: Path, name: str, values: Any) -> str:
    path = tmp_path / name
    path.write_text(values if isinstance(values, str) else yaml.safe_dump(values))
    return str(path)


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command as the console script does; its subprocess runs for real."""
    code = cli.main(["check-config", *args])
    out, err = capsys.readouterr()
    return code, out, err


def problems(out: str) -> list[str]:
    return [line[4:] for line in out.splitlines() if line.startswith("  - ")]


def shipped(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


# -- the shipped values pass ------------------------------------------------------------------


def test_the_shipped_values_pass_and_the_summary_says_what_is_wired(capsys) -> None:
    code, out, err = check(capsys, str(BASE))
    assert (code, err) == (0, ""), out
    ours = shipped(BASE)["hub"]["config"]
    port = ours["HubResilience"]["service_port"]
    assert out.startswith("hub-resilience check-config: no problems")
    summary = dict(line.strip().split(": ", 1) for line in out.splitlines()[1:])
    assert summary["hub-resilience"].strip() == "on"
    assert summary["spawner"].strip().startswith("resilient-kubespawner (Guaranteed QoS")
    assert summary["user pods"].strip() == "built: the default pod"
    assert summary["service"].strip() == f"hub-resilience on *:{port}"
    assert summary["route"].strip() == f"/user/ -> http://hub:{port}"
    assert f"timeout {ours['Culler']['timeout']} s" in summary["culler"]
    assert summary["activity"].strip().startswith("hub every ")


def test_the_shipped_values_with_the_event_overlay_pass(capsys) -> None:
    code, out, _ = check(capsys, str(BASE), str(EVENT))
    assert code == 0, out
    assert f"timeout {shipped(EVENT)['hub']['config']['Culler']['timeout']} s" in out


def test_every_profile_and_choice_is_built(tmp_path, capsys) -> None:
    profiles = {
        "singleuser": {
            "profileList": [
                {"display_name": "Small", "slug": "small"},
                {
                    "display_name": "Choose",
                    "slug": "choose",
                    "profile_options": {
                        "size": {
                            "display_name": "Size",
                            "choices": {
                                "s": {"display_name": "S", "default": True},
                                "m": {
                                    "display_name": "M",
                                    "kubespawner_override": {"mem_limit": "4G"},
                                },
                            },
                        }
                    },
                },
            ]
        }
    }
    code, out, _ = check(capsys, str(BASE), write(tmp_path, "profiles.yaml", profiles))
    assert code == 0, out
    assert "built: profile 'small', profile 'choose', profile 'choose' with size=m" in out


def test_switched_off_is_not_an_error_but_the_summary_says_so(tmp_path, capsys) -> None:
    off = {"hub": {"config": {"HubResilience": {"enabled": False}}}}
    code, out, _ = check(capsys, str(BASE), write(tmp_path, "off.yaml", off))
    assert code == 0, out
    assert "hub-resilience: off (HubResilience.enabled: false)" in out
    assert "not resilient-kubespawner: user pods' QoS is not enforced" in out


def test_values_without_the_drop_in_say_that_nothing_is_wired(tmp_path, capsys) -> None:
    code, out, _ = check(capsys, write(tmp_path, "plain.yaml", {}))
    assert code == 0, out
    assert "not wired: nothing ran configure()" in out


def test_an_unpacked_helm_chart_is_accepted(tmp_path, capsys) -> None:
    """The layout of `helm pull jupyterhub/jupyterhub --version 4.4.0 --untar`."""
    chart = tmp_path / "jupyterhub"
    (chart / "files" / "hub").mkdir(parents=True)
    release = released_chart()
    shutil.copy(release / "values.yaml", chart / "values.yaml")
    for name in ("jupyterhub_config.py", "z2jh.py"):
        shutil.copy(release / name, chart / "files" / "hub" / name)
    code, out, _ = check(capsys, "--chart", str(chart), str(BASE))
    assert code == 0, out
    assert f"z2jh chart {chart}" in out
    # The folder `helm pull --untar` ran in will do as well.
    assert z2jh_chart.find_chart(tmp_path).jupyterhub_config == (
        chart / "files" / "hub" / "jupyterhub_config.py"
    )


# -- each mistake is one clear line -----------------------------------------------------------


@pytest.mark.parametrize(
    ("overlays", "expected"),
    [
        pytest.param(
            [REFUSE, BURSTABLE_PROFILE],
            "spawns would fail: profile 'big', container 'notebook': cpu request 0.5 differs "
            "from limit",
            id="profile-not-guaranteed",
        ),
        pytest.param(
            [{"cull": {"enabled": True}}],
            "the hub would not start: hub_resilience.configure: the stock idle culler is "
            "configured as service 'jupyterhub-idle-culler'; two cullers would race",
            id="second-culler",
        ),
        pytest.param(
            [{"hub": {"config": {"Proxy": {"extra_routes": {"/user/": "http://x:1"}}}}}],
            "the hub would not start: hub_resilience.configure: Proxy.extra_routes already "
            "routes /user/ to http://x:1",
            id="hand-made-route",
        ),
        pytest.param(
            [{"hub": {"config": {"HubResilience": {"expected_servers": 800}}}}],
            "the hub would not start: hub_resilience.configure: unknown setting(s) "
            "HubResilience.expected_servers",
            id="misspelt-setting",
        ),
        pytest.param(
            [{"hub": {"config": {"loadRoles": {"x": {}}}}}],
            "the hub would not start: z2jh: Invalid hub.config section name: loadRoles.",
            id="bad-section-name",
        ),
        pytest.param(
            [{"hub": {"config": {"ResilientKubeSpawner": {"qos_polcy": "refuse"}}}}],
            "ResilientKubeSpawner.qos_polcy is not a setting of ResilientKubeSpawner (did you "
            "mean qos_policy?)",
            id="misspelt-spawner-setting",
        ),
        pytest.param(
            [{"hub": {"extraConfig": {"broken": "x = 1\nraise RuntimeError('boom')\n"}}}],
            "the hub would not start: RuntimeError: boom (in hub.extraConfig, line 2)",
            id="extra-config-raises",
        ),
    ],
)
def test_a_mistake_exits_1_with_one_line_naming_it(
    overlays: list[dict], expected: str, tmp_path, capsys
) -> None:
    files = [write(tmp_path, f"{i}.yaml", overlay) for i, overlay in enumerate(overlays)]
    code, out, err = check(capsys, str(BASE), *files)
    assert (code, err) == (1, ""), out
    assert out.startswith("hub-resilience check-config: 1 problem (")
    [problem] = problems(out)
    assert problem.startswith(expected), problem
    assert "Traceback" not in out


def test_every_problem_is_reported_in_one_run(tmp_path, capsys) -> None:
    """configure() refusing the values does not hide the profiles' problems."""
    misspelt = {"hub": {"config": {"HubResilience": {"expected_servers": 800}}}}
    files = [write(tmp_path, f"{i}.yaml", v) for i, v in
             enumerate([REFUSE, BURSTABLE_PROFILE, misspelt])]
    code, out, _ = check(capsys, str(BASE), *files)
    assert code == 1, out
    found = problems(out)
    assert len(found) == 2, found
    assert "HubResilience.expected_servers" in found[0]
    assert "profile 'big'" in found[1]


# -- unusable arguments -----------------------------------------------------------------------


def test_a_missing_file_exits_2(tmp_path, capsys) -> None:
    code, out, err = check(capsys, str(BASE), str(tmp_path / "nope.yaml"))
    assert (code, out) == (2, "")
    missing = tmp_path / "nope.yaml"
    assert err.strip() == f"hub-resilience check-config: error: {missing}: no such file"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a: [1,\n", "not valid YAML"), ("- a\n- b\n", "must be a mapping at the top, got list")],
)
def test_bad_yaml_exits_2(text: str, expected: str, tmp_path, capsys) -> None:
    code, _, err = check(capsys, write(tmp_path, "bad.yaml", text))
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1


def test_chart_files_not_found_exit_2(tmp_path, capsys) -> None:
    code, _, err = check(capsys, "--chart", str(tmp_path), str(BASE))
    assert code == 2
    assert f"{tmp_path} does not hold z2jh's chart files" in err


def test_the_console_command_exits_with_the_code(tmp_path) -> None:
    bad = write(tmp_path, "cull.yaml", {"cull": {"enabled": True}})
    result = subprocess.run(
        [sys.executable, "-m", "hub_resilience", "check-config", str(BASE), bad],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "two cullers would race each other" in result.stdout


# -- the pure parts ---------------------------------------------------------------------------


def test_pod_cases_cover_each_profile_and_each_other_choice() -> None:
    assert pod_cases([]) == ([PodCase("the default pod", {})], [])
    cases, notes = pod_cases([
        {"slug": "a"},
        {"slug": "b", "profile_options": {
            "size": {"choices": {"s": {"default": True}, "m": {}, "l": {}}},
            "image": {"choices": {"x": {"default": True}}},
        }},
        {"slug": "free", "profile_options": {"image": {"unlisted_choice": {"enabled": True}}}},
    ])
    assert [(c.label, c.user_options, c.choice) for c in cases] == [
        ("profile 'a'", {"profile": "a"}, None),
        ("profile 'b'", {"profile": "b"}, "size=s, image=x, the default"),
        ("profile 'b' with size=m", {"profile": "b", "size": "m"}, "size=m"),
        ("profile 'b' with size=l", {"profile": "b", "size": "l"}, "size=l"),
    ]
    assert notes == ["profile 'free' not checked: option image has only a free-form choice"]


def test_a_report_keeps_one_line_per_problem_and_drops_repeats() -> None:
    report = Report()
    report.add("hub_resilience.configure: HubResilience.service_port must be\n  a port")
    report.add("HubResilience.service_port must be a port")
    assert report.problems == [
        "hub_resilience.configure: HubResilience.service_port must be a port"
    ]
    assert Report.from_json(report.to_json()) == report


def test_z2jh_exiting_is_reported_with_its_fatal_message() -> None:
    output = "Loading pass-through config section hub.config.JupyterHub\nFATAL: Invalid x.\n"
    assert check_config.exit_problem(SystemExit(1), output) == (
        "the hub would not start: z2jh: Invalid x."
    )
    assert check_config.exit_problem(SystemExit(3), "") == (
        "the hub would not start: z2jh's configuration exits with status 3"
    )


def test_an_exception_is_named_with_where_it_was_raised(tmp_path) -> None:
    etc = tmp_path / "etc"
    for filename, where in (
        ("<string>", "in hub.extraConfig, line 2"),
        ("my_dropin.py", "in jupyterhub_config.d/my_dropin.py, line 2"),
        (str(etc / "jupyterhub_config.py"), "in jupyterhub_config.py, line 2"),
    ):
        try:
            exec(compile("x = 1\nraise ValueError('bad value')\n", filename, "exec"))
        except ValueError as e:
            assert check_config.describe_exception(e, etc) == f"ValueError: bad value ({where})"
    assert check_config.describe_exception(KeyError()) == "KeyError"


def test_the_default_chart_is_looked_for_and_the_message_says_to_pass_chart(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv(z2jh_chart.Z2JH_DIR_ENV, raising=False)
    with pytest.raises(z2jh_chart.ChartNotFoundError) as info:
        z2jh_chart.default_chart(starts=[tmp_path / "clone"])
    message = str(info.value)
    assert "pass --chart DIR" in message and z2jh_chart.Z2JH_DIR_ENV in message
    assert str(tmp_path / "shared" / "z2jh" / "4.4.0") in message

    release = tmp_path / "elsewhere" / "4.4.0"
    release.mkdir(parents=True)
    for name in ("values.yaml", "jupyterhub_config.py", "z2jh.py"):
        shutil.copy(released_chart() / name, release / name)
    monkeypatch.setenv(z2jh_chart.Z2JH_DIR_ENV, str(tmp_path / "elsewhere"))
    assert z2jh_chart.default_chart(starts=[tmp_path / "clone"]).folder == release
