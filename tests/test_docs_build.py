"""The documentation builds with Sphinx, warnings as errors, and says what the code does.

- The build (MyST, autodoc-traits, pydata-sphinx-theme) runs in a subprocess into a
  temporary directory, with ``-W --keep-going``; no network is used.
- The configuration reference documents every trait of every Configurable in the package
  (classes found here by walking the package, independently of docs/conf.py) and none of
  the traits they inherit (KubeSpawner's are KubeSpawner's to document).
- Every metric the package exports is in the generated metrics reference and in the
  operator's guide docs/metrics.md.
- The Helm values in the docs pass the zero-to-jupyterhub chart's schema (the quick start's
  on top of ``helm-values/hub-resilience.yaml``), and the quick start's QoS defaults do what
  the page says.
"""

from __future__ import annotations

import html as htmllib
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from traitlets.config import Configurable

import hub_resilience
from tests.test_dashboard import exported_metric_names
from tests.z2jh import chart_defaults, merge_values, validate_values_overlay

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: Pages other people write; when present they must be in the navigation.
OPTIONAL_PAGES = ("service", "configuration", "benchmarks")


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML build of docs/ (fails the tests that use it on any warning)."""
    out = tmp_path_factory.mktemp("docs-html")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(DOCS), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"Sphinx failed:\n{result.stdout}\n{result.stderr}"
    assert "WARNING" not in result.stderr, result.stderr
    return out


def _package_configurables() -> list[type]:
    found = []
    for info in pkgutil.walk_packages(hub_resilience.__path__, "hub_resilience."):
        if info.name.endswith(".__main__"):
            continue
        module = importlib.import_module(info.name)
        found += [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, Configurable)
            and obj.__module__ == module.__name__
        ]
    return found


def test_docs_build_with_every_page(html: Path) -> None:
    index = (html / "index.html").read_text()
    for page in sorted(DOCS.glob("*.md")) + sorted((DOCS / "reference").glob("*.md")):
        built = html / page.relative_to(DOCS).with_suffix(".html")
        assert built.exists(), f"{page.name} was not built"
    for name in OPTIONAL_PAGES:
        if (DOCS / f"{name}.md").exists():
            assert f'href="{name}.html"' in index, f"{name}.md is not in the navigation"


def test_configuration_reference_has_every_trait_and_only_own_ones(html: Path) -> None:
    from hub_resilience.hub.spawner import ResilientKubeSpawner
    from hub_resilience.service.culler import Culler

    page = (html / "reference" / "configuration.html").read_text()
    text = _words(htmllib.unescape(re.sub(r"<[^>]+>", " ", page)))
    classes = _package_configurables()
    assert {ResilientKubeSpawner, Culler} <= set(classes)
    for cls in classes:
        dotted = f"{cls.__module__}.{cls.__qualname__}"
        assert f'id="{dotted}"' in page, f"{dotted} is not in the configuration reference"
        own = cls.class_own_traits(config=True)
        for name in own:
            assert f'id="{dotted}.{name}"' in page, f"{dotted}.{name} is not documented"
            help_start = " ".join(_words(own[name].help).split()[:6])
            assert help_start in text, f"help of {dotted}.{name} is missing"
        for name in set(cls.class_traits(config=True)) - set(own):
            assert f'id="{dotted}.{name}"' not in page, f"inherited {dotted}.{name} listed"


def _words(text: str) -> str:
    """Letters and digits only, lower case, single spaces (quotes and markup vary)."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _package_metric_names() -> set[str]:
    """Exported series names of the package, histograms by their base name."""
    names = set()
    for name in exported_metric_names():
        if not name.startswith("hub_resilience_") or name.endswith("_created"):
            continue
        names.add(re.sub(r"_(bucket|count|sum)$", "", name))
    return names


def test_every_metric_is_in_the_reference_and_the_guide(html: Path) -> None:
    names = _package_metric_names()
    assert "hub_resilience_spawn_outcomes_total" in names  # the collectors were found
    reference = (html / "reference" / "metrics.html").read_text()
    guide = (DOCS / "metrics.md").read_text()
    assert not {n for n in names if n not in reference}, "missing from the metrics reference"
    missing = sorted(n for n in names if n not in guide)
    assert not missing, f"docs/metrics.md does not describe {missing}"


def _yaml_blocks(page: str) -> list[object]:
    text = (DOCS / page).read_text()
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_helm_values_in_the_docs_pass_the_chart_schema() -> None:
    chart_keys = set(chart_defaults())
    checked = 0
    for page in ("quickstart.md", "runbook.md", "qos.md"):
        for block in _yaml_blocks(page):
            if isinstance(block, dict) and set(block) <= chart_keys:
                validate_values_overlay(block)
                checked += 1
    assert checked >= 4


async def test_quickstart_values_make_the_charts_pods_guaranteed(make_spawner: Callable) -> None:
    """The quick start's overlay, on top of helm-values/hub-resilience.yaml, passes the
    chart's schema, and its QoS defaults are what turns a pod with the chart's resource-less
    block-cloud-metadata init container into a Guaranteed one (refused without them)."""
    from hub_resilience.hub import qos

    (overlay,) = [
        block for block in _yaml_blocks("quickstart.md")
        if isinstance(block, dict) and "hub" in block
    ]
    base = yaml.safe_load((ROOT / "helm-values" / "hub-resilience.yaml").read_text())
    validate_values_overlay(merge_values(base, overlay))

    spawner = make_spawner(overlay["hub"]["config"]["ResilientKubeSpawner"])
    container = {"name": "notebook",
                 "resources": {"requests": {"cpu": "1", "memory": "2G"},
                               "limits": {"cpu": "1", "memory": "2G"}}}
    pod = {"spec": {"containers": [container],
                    "initContainers": [{"name": "block-cloud-metadata"}]}}
    with pytest.raises(qos.QoSError, match="block-cloud-metadata"):
        qos.make_guaranteed(pod)
    assert qos.qos_class(spawner.enforce_qos(pod)) == qos.QoSClass.GUARANTEED
