"""``hub-resilience plan``: the command line, node JSON input, the overlay and its schema.

The overlay is validated against the real z2jh chart schema (tests/z2jh.py), and its
guaranteed choices are fed through the real KubeSpawner (profile form -> user_options ->
load_user_options -> get_pod_manifest) to check the pods' QoS class.
"""
from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from kubernetes.utils.quantity import parse_quantity

from hub_resilience.tools.cli import main
from tests import z2jh
from tests.z2jh import InvalidValuesError, merge_values, validate_values_overlay

DATA = Path(__file__).parent / "data" / "planner"
NODE_JSON = str(DATA / "node-r5-xlarge.json")
PODS_JSON = str(DATA / "pods-r5-xlarge.json")
WORKED = ["--cpu", "3.485", "--memory", "29298290688", "--choices", "4"]
EVENT = ["--arrivals", "60", "--arrival-minutes", "3", "--node-startup-minutes", "10"]

WORKED_EXAMPLE_YAML = """\
mem_3_4_gb:
  display_name: 3.4 GB RAM, upto 3.485 CPUs
  default: true
  kubespawner_override:
    mem_guarantee: 3662286336
    mem_limit: 3662286336
    cpu_guarantee: 0.435625
    cpu_limit: 3.485
mem_6_8_gb:
  display_name: 6.8 GB RAM, upto 3.485 CPUs
  kubespawner_override:
    mem_guarantee: 7324572672
    mem_limit: 7324572672
    cpu_guarantee: 0.87125
    cpu_limit: 3.485
mem_13_6_gb:
  display_name: 13.6 GB RAM, upto 3.485 CPUs
  kubespawner_override:
    mem_guarantee: 14649145344
    mem_limit: 14649145344
    cpu_guarantee: 1.7425
    cpu_limit: 3.485
mem_27_3_gb:
  display_name: 27.3 GB RAM, upto 3.485 CPUs
  kubespawner_override:
    mem_guarantee: 29298290688
    mem_limit: 29298290688
    cpu_guarantee: 3.485
    cpu_limit: 3.485
"""


def plan(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- printing the choices ----------------------------------------------------------------


def test_worked_example_command_prints_the_choices_as_yaml(capsys):
    code, out, err = plan(capsys, *WORKED, "--mode", "memory-only")
    assert code == 0
    assert out == WORKED_EXAMPLE_YAML
    # The report (stderr) says which rules fail and why, and flags the CPU rounding.
    assert "FAIL min-users-per-node [mem_13_6_gb" in err
    assert "FAIL min-users-per-node [mem_27_3_gb" in err
    assert "ok   min-users-per-node [mem_3_4_gb" in err
    assert "2 of 12 checks failed" in err
    assert "only 7 of the 8 pods" in err


def test_installed_console_script_runs_the_worked_example():
    script = Path(sys.executable).with_name("hub-resilience")
    result = subprocess.run(
        [str(script), "plan", *WORKED, "--mode", "memory-only"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == WORKED_EXAMPLE_YAML


def test_guaranteed_is_the_default_mode(capsys):
    code, out, _ = plan(capsys, *WORKED)
    assert code == 0
    choices = yaml.safe_load(out)
    for choice in choices.values():
        override = choice["kubespawner_override"]
        assert override["cpu_guarantee"] == override["cpu_limit"]
        assert override["mem_guarantee"] == override["mem_limit"]
    assert choices["mem_3_4_gb"]["kubespawner_override"]["cpu_guarantee"] == 0.435


def test_memory_takes_kubernetes_units(capsys):
    code, out, _ = plan(capsys, "--cpu", "3485m", "--memory", "28611612Ki", "--choices", "4",
                        "--mode", "memory-only")
    assert code == 0
    assert out == WORKED_EXAMPLE_YAML
    code, out, _ = plan(capsys, "--cpu", "4", "--memory", "27.3Gi", "--choices", "1")
    assert code == 0
    assert yaml.safe_load(out)["mem_27_3_gb"]["kubespawner_override"]["mem_limit"] == 29313151795


# -- bad input ---------------------------------------------------------------------------


SMALL = ["--cpu", "2", "--memory", "8Gi"]
BAD_INPUT = [
    (["--cpu", "3.485", "--memory", "27.3GB"],
     "--memory: '27.3GB' is not a Kubernetes quantity"),
    (["--cpu", "3.5 cores", "--memory", "1Gi"],
     "--cpu: '3.5 cores' is not a Kubernetes quantity"),
    (["--cpu", "0", "--memory", "1Gi"], "--cpu: '0' must be more than zero CPUs"),
    (["--cpu", "-2", "--memory", "1Gi"], "--cpu: '-2' must be more than zero CPUs"),
    (["--cpu", "2", "--memory=-1Gi"], "--memory: '-1Gi' must be at least one byte"),
    ([*SMALL, "--choices", "0"], "--choices: must be a whole number"),
    ([*SMALL, "--choices", "7"], "--choices: 7 choices make the smallest 1/64"),
    ([*SMALL, "--min-memory", "lots"], "--min-memory: 'lots'"),
    (["--cpu", "2"], "--memory: --cpu and --memory go together"),
    ([], "give exactly one source of the node's capacity"),
    ([*SMALL, "--node-json", NODE_JSON], "(got --cpu/--memory and --node-json)"),
    ([*SMALL, "--pods-json", PODS_JSON], "--pods-json: only goes with --node-json"),
    ([*SMALL, "--arrivals", "60"],
     "--arrival-minutes: --arrivals, --arrival-minutes and --node-startup-minutes go together"),
    ([*SMALL, "--max-nodes", "4"], "--max-nodes: needs --arrivals"),
    ([*SMALL, "--oversubscription", "2"], "--oversubscription: guaranteed mode"),
    ([*SMALL, *EVENT, "--headroom", "1"], "--headroom: must be at least 0 and below 1"),
    (["--node-json", "/nonexistent/node.json"],
     "--node-json: cannot read /nonexistent/node.json"),
    (["--node-json", PODS_JSON], "--node-json: the list holds 12 nodes; give exactly one"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT)
def test_bad_input_gets_a_clear_error_naming_the_option(capsys, argv, message):
    code, out, err = plan(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("hub-resilience plan: error: ")
    assert message in err


def test_argparse_rejects_non_numbers(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plan", "--cpu", "2", "--memory", "8Gi", "--choices", "four"])
    assert info.value.code == 2
    assert "--choices: invalid int value: 'four'" in capsys.readouterr().err


def test_invalid_json_is_reported(capsys, tmp_path):
    broken = tmp_path / "node.json"
    broken.write_text('{"kind": "Node", ')
    code, _, err = plan(capsys, "--node-json", str(broken))
    assert code == 2
    assert f"--node-json: {broken} is not JSON" in err


# -- node JSON and the live cluster -------------------------------------------------------


def test_node_json_with_daemonset_pods_gives_the_worked_example(capsys):
    code, out, err = plan(
        capsys, "--node-json", NODE_JSON, "--pods-json", PODS_JSON, "--choices", "4",
        "--mode", "memory-only",
    )
    assert code == 0, err
    assert out == WORKED_EXAMPLE_YAML
    assert "node: 3.485 CPUs, 27.3 GB (29298290688 bytes), 49 pods for user pods" in err


def test_node_json_from_stdin(capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(Path(NODE_JSON).read_text()))
    code, _, err = plan(capsys, "--node-json", "-", "--choices", "2")
    assert code == 0, err
    assert "node: 3.92 CPUs" in err


def test_live_cluster_errors_name_the_kubeconfig(capsys, tmp_path, offline_kubeconfig):
    """The live path against a kubeconfig whose API server is a closed loopback port.

    Reading a real API server is the lead's k8s test; here only the failures are checked.
    """
    code, _, err = plan(capsys, "--node", "x", "--kubeconfig", str(tmp_path / "missing"))
    assert code == 2
    assert "--kubeconfig: cannot load" in err
    code, _, err = plan(capsys, "--node", "x", "--kubeconfig", str(offline_kubeconfig))
    assert code == 2
    assert "--kubeconfig: cannot reach the API server" in err
    code, _, err = plan(capsys, "--node", "x", "--kubeconfig", str(offline_kubeconfig),
                        "--context", "nope")
    assert code == 2
    assert "--kubeconfig: cannot load" in err and "nope" in err


# -- the values overlay -------------------------------------------------------------------


def write_overlay(capsys, tmp_path: Path, *argv: str) -> dict:
    path = tmp_path / "overlay.yaml"
    code, _, err = plan(capsys, *argv, "--overlay", str(path))
    assert code == 0, err
    assert f"values overlay written to {path}" in err
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("mode", ["guaranteed", "memory-only"])
def test_overlay_validates_against_the_z2jh_schema(capsys, tmp_path, mode):
    overlay = write_overlay(
        capsys, tmp_path, *WORKED, "--mode", mode, *EVENT, "--users", "300",
        "--max-nodes", "60", "--image", "quay.io/jupyter/scipy-notebook:2024-09-16",
    )
    validate_values_overlay(overlay)

    # 60 nodes x users of the default choice per node: 8 guaranteed (0.435 CPUs each), 7
    # memory-only (0.435625 CPUs, counted as 436m by the scheduler).
    per_node = {"guaranteed": 8, "memory-only": 7}[mode]
    assert overlay["hub"] == {
        "consecutiveFailureLimit": 5, "concurrentSpawnLimit": 60,
        "activeServerLimit": 60 * per_node,
    }
    placeholder = overlay["scheduling"]["userPlaceholder"]
    assert placeholder["enabled"] is True
    assert placeholder["replicas"] == 29
    assert overlay["scheduling"]["podPriority"]["enabled"] is True
    assert overlay["prePuller"]["hook"]["enabled"] is True
    assert overlay["prePuller"]["continuous"]["enabled"] is True
    choices = overlay["singleuser"]["profileList"][0]["profile_options"]["resources"]["choices"]
    assert list(choices) == ["mem_3_4_gb", "mem_6_8_gb", "mem_13_6_gb", "mem_27_3_gb"]


def test_overlay_without_event_validates_and_disables_placeholders(capsys, tmp_path):
    overlay = write_overlay(capsys, tmp_path, *WORKED)
    validate_values_overlay(overlay)
    assert overlay["scheduling"]["userPlaceholder"] == {"enabled": False, "replicas": 0}


def test_overlay_write_failure_is_reported(capsys, tmp_path):
    code, _, err = plan(capsys, *WORKED, "--overlay", str(tmp_path / "no" / "such" / "dir.yaml"))
    assert code == 2
    assert "--overlay: cannot write" in err


def test_schema_helper_rejects_invalid_values_with_their_place():
    with pytest.raises(InvalidValuesError) as info:
        validate_values_overlay(
            {"scheduling": {"userPlaceholder": {"replicas": "3", "size": 1}}, "hubb": {}}
        )
    message = str(info.value)
    assert "(3 error(s))" in message
    assert "scheduling.userPlaceholder.replicas: '3' is not of type 'integer'" in message
    assert "scheduling.userPlaceholder: Additional properties are not allowed ('size'" in message
    assert "(top level): Additional properties are not allowed ('hubb'" in message


def test_schema_helper_merges_like_helm():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = merge_values(base, {"a": {"c": [3], "e": 2}, "d": None})
    assert merged == {"a": {"b": 1, "c": [3], "e": 2}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # not modified
    # Removing a required top-level key through null is caught by the schema.
    with pytest.raises(InvalidValuesError, match="'prePuller' is a required property"):
        validate_values_overlay({"prePuller": None})


def test_schema_helper_finds_the_chart_files_named_by_the_environment(tmp_path, monkeypatch):
    (tmp_path / "values.yaml").write_text("{}")
    (tmp_path / "values.schema.yaml").write_text("{}")
    monkeypatch.setenv(z2jh.Z2JH_DIR_ENV, str(tmp_path))
    z2jh.z2jh_dir.cache_clear()
    try:
        assert z2jh.z2jh_dir() == tmp_path
    finally:
        z2jh.z2jh_dir.cache_clear()


def test_schema_helper_lists_where_it_looked_when_the_chart_files_are_missing(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(z2jh.Z2JH_DIR_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setattr(z2jh, "REPO_ROOT", tmp_path / "clone")
    monkeypatch.setattr(z2jh, "WORKSPACE_Z2JH_DIR", tmp_path / "workspace")
    z2jh.z2jh_dir.cache_clear()
    try:
        with pytest.raises(FileNotFoundError) as info:
            z2jh.z2jh_dir()
    finally:
        z2jh.z2jh_dir.cache_clear()
    message = str(info.value)
    assert z2jh.Z2JH_DIR_ENV in message
    assert str(tmp_path / "nowhere") in message
    assert str(tmp_path / "shared" / "z2jh") in message
    assert str(tmp_path / "workspace") in message


# -- the spawner's QoS check -------------------------------------------------------------


async def spawn_pods(overlay: dict) -> dict:
    """Each choice of the overlay's profile, through the real KubeSpawner: pod per choice."""
    from kubespawner import KubeSpawner

    profile_list = overlay["singleuser"]["profileList"]
    (profile,) = profile_list
    pods = {}
    for key in profile["profile_options"]["resources"]["choices"]:
        spawner = KubeSpawner(_mock=True, profile_list=profile_list)
        form = await spawner.get_options_form()
        assert f'value="{key}"' in form
        spawner.user_options = spawner.run_options_from_form(
            {"profile": [profile["slug"]], f"profile-option-{profile['slug']}--resources": [key]}
        )
        await spawner.load_user_options()
        pods[key] = await spawner.get_pod_manifest()
    return pods


async def test_guaranteed_choices_pass_the_spawner_qos_check(capsys, tmp_path, offline_kubeconfig):
    from hub_resilience.hub.qos import QoSClass, qos_class

    overlay = write_overlay(capsys, tmp_path, *WORKED, "--mode", "guaranteed")
    choices = overlay["singleuser"]["profileList"][0]["profile_options"]["resources"]["choices"]
    pods = await spawn_pods(overlay)

    assert list(pods) == list(choices)
    for key, pod in pods.items():
        assert qos_class(pod) == QoSClass.GUARANTEED, key
        resources = pod.spec.containers[0].resources
        override = choices[key]["kubespawner_override"]
        assert parse_quantity(str(resources.requests["cpu"])) == Decimal(
            str(override["cpu_guarantee"])
        )
        assert parse_quantity(str(resources.limits["memory"])) == override["mem_limit"]


async def test_memory_only_choices_guarantee_memory_but_burst_cpu(
    capsys, tmp_path, offline_kubeconfig
):
    from hub_resilience.hub.qos import QoSClass, qos_class

    overlay = write_overlay(capsys, tmp_path, *WORKED, "--mode", "memory-only")
    pods = await spawn_pods(overlay)
    for key, pod in pods.items():
        resources = pod.spec.containers[0].resources
        assert resources.requests["memory"] == resources.limits["memory"], key
        assert parse_quantity(str(resources.limits["cpu"])) == Decimal("3.485")
    # Below the whole node the CPU guarantee is smaller than the limit: Burstable by design.
    assert qos_class(pods["mem_3_4_gb"]) == QoSClass.BURSTABLE
    assert str(pods["mem_3_4_gb"].spec.containers[0].resources.requests["cpu"]) == "0.435625"
