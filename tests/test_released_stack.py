"""The stack operators run: zero-to-jupyterhub 4.4.0's hub image, and the package beside it.

``./scripts/test`` runs the suite in two lanes. The newest lane is the main virtualenv (the
newest releases, the machine's Python). The released lane (``HUB_RESILIENCE_LANE=z2jh-4.4.0``)
is ``$HUB_RESILIENCE_HOME/venv-z2jh-4.4.0``, built by ``scripts/bootstrap.sh`` as the hub
image is (Python 3.12, ``pip install -r`` the chart's frozen ``requirements.txt``) and then
as the docs tell operators to install the package (``pip install -c requirements.txt``), and
it runs the tests that reach JupyterHub, KubeSpawner, tornado, traitlets and
prometheus-client.

These tests check that each lane is what it says. In the released lane: Python 3.12, exactly
the image's versions of the stack, and every package the image pins still at its pin, so
installing the package (and the test tools) under the image's constraints only added
packages. In the newest lane, where those versions are not installed: the lane is the
newest one, and the package's declared dependency ranges admit the image's pins (otherwise
``pip install -c`` in the image could not install it at all).
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
from functools import lru_cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.z2jh_hub import released_chart

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

#: The environment variable scripts/test sets for each lane, and the released lane's value.
LANE_ENV = "HUB_RESILIENCE_LANE"
NEWEST_LANE = "newest"
RELEASED_LANE = "z2jh-4.4.0"

#: The released lane's virtualenv (under $HUB_RESILIENCE_HOME, made by scripts/bootstrap.sh).
RELEASED_VENV_NAME = "venv-z2jh-4.4.0"

#: The hub image's Python.
RELEASED_PYTHON = (3, 12)

#: The stack the package runs inside: the versions these must be in the released lane.
STACK = (
    "jupyterhub",
    "jupyterhub-kubespawner",
    "kubernetes-asyncio",
    "tornado",
    "traitlets",
    "prometheus-client",
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def lane() -> str:
    return os.environ.get(LANE_ENV) or NEWEST_LANE


def in_released_lane() -> bool:
    return lane() == RELEASED_LANE


@lru_cache(maxsize=1)
def image_pins() -> dict[str, str]:
    """The hub image's frozen packages (``requirements.txt``), canonical name -> version.

    Every requirement there is an exact ``==`` pin (pip-compile's output); anything else
    would make "the image's version" meaningless, so it fails here.
    """
    path = released_chart() / "requirements.txt"
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"{path}:{number}: {line!r} is not an exact pin"
        )
        if requirement.marker is None or requirement.marker.evaluate():
            pins[canonicalize_name(requirement.name)] = specifiers[0].version
    return pins


@lru_cache(maxsize=1)
def project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_lane_is_the_interpreter_it_names() -> None:
    """The lane variable says which virtualenv runs the tests, and is the one that does.

    scripts/test puts the lane's ``bin/`` first on PATH; a lane that ran another
    virtualenv's Python would test the wrong stack without any other test noticing.
    """
    venv = Path(sys.prefix).name
    assert lane() in (NEWEST_LANE, RELEASED_LANE), (
        f"{LANE_ENV}={os.environ.get(LANE_ENV)!r}: scripts/test sets it to "
        f"{NEWEST_LANE!r} or {RELEASED_LANE!r} (unset means {NEWEST_LANE!r})"
    )
    if in_released_lane():
        assert venv == RELEASED_VENV_NAME, (
            f"{LANE_ENV}={RELEASED_LANE} but the tests run in {sys.prefix}, not "
            f"$HUB_RESILIENCE_HOME/{RELEASED_VENV_NAME} (scripts/bootstrap.sh makes it)"
        )
    else:
        assert venv != RELEASED_VENV_NAME, (
            f"the tests run in {sys.prefix}, the released lane's virtualenv, but "
            f"{LANE_ENV} is {os.environ.get(LANE_ENV)!r}, not {RELEASED_LANE!r}"
        )


def test_python_is_the_hub_images() -> None:
    """Released lane: Python 3.12, as in the image. Newest lane: a Python the package admits."""
    running = ".".join(map(str, sys.version_info[:3]))
    if in_released_lane():
        assert sys.version_info[:2] == RELEASED_PYTHON, (
            f"the released lane runs Python {running}; z2jh 4.4.0's hub image runs "
            f"{'.'.join(map(str, RELEASED_PYTHON))}"
        )
    else:
        requires = SpecifierSet(project()["requires-python"])
        assert requires.contains(running), f"Python {running} is outside requires-python {requires}"
    # Either way, the package must admit the image's Python.
    image_python = ".".join(map(str, RELEASED_PYTHON))
    assert SpecifierSet(project()["requires-python"]).contains(image_python), (
        f"requires-python {project()['requires-python']} excludes the hub image's Python "
        f"{image_python}"
    )


def test_stack_is_the_released_one() -> None:
    """Released lane: JupyterHub, KubeSpawner and the rest are exactly the image's versions.

    Newest lane: the package's declared dependency ranges admit each of the image's pins
    (the release operators run), so ``pip install -c requirements.txt hub-resilience`` in
    the image can be satisfied without changing a pin.
    """
    pins = image_pins()
    missing = [name for name in STACK if name not in pins]
    assert not missing, f"the image's requirements.txt pins none of {missing}"
    if in_released_lane():
        wrong = [
            f"{name}: installed {installed_version(name)}, the image has {pins[name]}"
            for name in STACK
            if installed_version(name) != pins[name]
        ]
        assert not wrong, "the released lane is not z2jh 4.4.0's stack:\n" + "\n".join(wrong)
    else:
        assert lane() == NEWEST_LANE
        excluded = []
        checked = []
        for line in project()["dependencies"]:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            if name in pins:
                checked.append(name)
                if not requirement.specifier.contains(pins[name]):
                    excluded.append(f"{line!r} excludes the image's {name}=={pins[name]}")
        assert not excluded, "pyproject.toml's dependencies exclude z2jh 4.4.0's hub image:\n" + (
            "\n".join(excluded)
        )
        # The ranges that matter were all checked (a renamed dependency would skip them).
        unchecked = {"jupyterhub", "jupyterhub-kubespawner", "tornado", "traitlets"} - set(checked)
        assert not unchecked, f"pyproject.toml declares no range for {sorted(unchecked)}"


def test_constraints_changed_no_pinned_package() -> None:
    """Released lane: every package the image pins is installed at its pin.

    The lane installed the package and its test tools with ``-c requirements.txt`` after the
    image's own ``pip install -r requirements.txt``; those steps may add packages but must
    not upgrade, downgrade or remove one the image pins (each difference is listed).
    Newest lane: the test extra's ranges (and the extras it includes) admit the image's pins
    of the packages they name, so the released lane's constrained install of the test tools
    can keep every pin.
    """
    pins = image_pins()
    if in_released_lane():
        differences = []
        for name, pinned in sorted(pins.items()):
            installed = installed_version(name)
            if installed is None:
                differences.append(f"{name}: pinned {pinned}, not installed")
            elif installed != pinned:
                differences.append(f"{name}: pinned {pinned}, installed {installed}")
        assert not differences, (
            f"{len(differences)} of the image's {len(pins)} pinned packages changed in the "
            "released lane (the constrained install must only add packages):\n"
            + "\n".join(differences)
        )
    else:
        assert lane() == NEWEST_LANE
        excluded = [
            f"{line!r} excludes the image's {name}=={pins[name]}"
            for line in extra_requirements("test")
            if (name := canonicalize_name(Requirement(line).name)) in pins
            and not Requirement(line).specifier.contains(pins[name])
        ]
        assert not excluded, (
            "the test extra cannot be installed under z2jh 4.4.0's pins:\n" + "\n".join(excluded)
        )


def extra_requirements(extra: str) -> list[str]:
    """The requirements of one of the package's extras, with the extras it names expanded."""
    own = canonicalize_name(project()["name"])
    lines = []
    for line in project()["optional-dependencies"][extra]:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == own:
            for included in sorted(requirement.extras):
                lines += extra_requirements(included)
        else:
            lines.append(line)
    return lines
