"""Sphinx configuration for the hub-resilience documentation.

The configuration and metrics references are generated from the code, so they cannot drift:

- ``hub-resilience-configurables`` walks the ``hub_resilience`` package, finds every traitlets
  ``Configurable`` subclass defined there, and documents each with autodoc-traits'
  ``autoconfigurable``, listing only the traits the class itself adds (ResilientKubeSpawner's
  hundreds of inherited KubeSpawner traits are documented by KubeSpawner).
- ``hub-resilience-metrics`` lists every metric the package exports: the metric objects of
  ``hub_resilience`` modules registered in a registry a process serves (prometheus-client's
  default one, which the hub serves on ``/hub/metrics``, or a ``CollectorRegistry`` of the
  package's, such as the service's), and the package's scrape-time collectors.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (the test suite
does the same into a temporary directory). Nothing is fetched from the network.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.directives.other import TocTree
from sphinx.util import docname_join
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import hub_resilience  # noqa: E402

project = "hub-resilience"
author = "hub-resilience contributors"
copyright = "hub-resilience contributors"  # noqa: A001 - Sphinx's name for it
release = version = hub_resilience.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "autodoc_traits",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3


autodoc_member_order = "bysource"
autodoc_typehints = "none"
# No network: cross-project links are written as plain URLs, not intersphinx.
nitpicky = False

html_theme = "pydata_sphinx_theme"
html_title = "hub-resilience"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []
html_show_sourcelink = False


# --- a toctree whose optional entries may not exist yet --------------------------------------


class OptionalEntriesTocTree(TocTree):
    """``toctree`` with an ``:optional:`` option: entries named there are left out while
    their page does not exist (pages other people are still writing), instead of failing
    the -W build. Every other entry must exist, as in a plain toctree."""

    option_spec = {**TocTree.option_spec, "optional": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        optional = set((self.options.pop("optional", "") or "").replace(",", " ").split())
        current = self.env.docname
        self.content = StringList(
            [
                line
                for line in self.content
                if line.strip() not in optional
                or docname_join(current, line.strip()) in self.env.found_docs
            ]
        )
        return super().run()


# --- discovery -------------------------------------------------------------------------------


def package_modules(package: str = "hub_resilience") -> Iterator[ModuleType]:
    """Every module of the package, imported (``__main__`` is skipped: it runs the CLI)."""
    root = importlib.import_module(package)
    yield root
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        yield importlib.import_module(info.name)


def package_configurables() -> list[type]:
    """Configurable subclasses defined in the package, in module then source order."""
    from traitlets.config import Configurable

    found = []
    for module in package_modules():
        members = [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, Configurable)
            and obj.__module__ == module.__name__
        ]
        members.sort(key=lambda cls: inspect.getsourcelines(cls)[1])
        found.extend(members)
    return found


def own_config_traits(cls: type) -> list[str]:
    """Names of the config traits ``cls`` defines itself (not inherited), in source order."""
    own = cls.class_own_traits(config=True)
    return [name for name in vars(cls) if name in own]


class ConfigurablesDirective(SphinxDirective):
    """Document every Configurable of the package with autodoc-traits."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        lines = StringList()
        for cls in package_configurables():
            inherited = sorted(set(cls.class_traits(config=True)) - set(own_config_traits(cls)))
            dotted = f"{cls.__module__}.{cls.__qualname__}"
            lines.append(f".. autoconfigurable:: {dotted}", "<hub-resilience>")
            if inherited:
                lines.append(f"   :exclude-members: {', '.join(inherited)}", "<hub-resilience>")
            lines.append("", "<hub-resilience>")
        container = nodes.container()
        self.state.nested_parse(lines, self.content_offset, container)
        return container.children


# --- metrics ----------------------------------------------------------------------------------


def _exported_family_names(modules: list[ModuleType]) -> set[str]:
    """Families of the default registry (the hub's /hub/metrics) and of every registry a
    package module defines (the service's /metrics)."""
    from prometheus_client import REGISTRY, CollectorRegistry

    registries = [REGISTRY] + [
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, CollectorRegistry) and obj is not REGISTRY
    ]
    return {family.name for registry in registries for family in registry.collect()}


def package_metrics() -> list[dict]:
    """Name, type, labels and help of every metric family the package exports."""
    from prometheus_client.metrics import MetricWrapperBase

    modules = list(package_modules())
    exported = _exported_family_names(modules)
    found: dict[str, dict] = {}
    for module in modules:
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                (family,) = obj.describe()
                if family.name not in exported:
                    continue  # registry=None: internal, exported through a collector
                found.setdefault(
                    family.name,
                    {
                        "name": family.name,
                        "type": family.type,
                        "labels": list(obj._labelnames),
                        "help": family.documentation,
                    },
                )
            elif _is_collector_class(obj, module.__name__):
                for family in _collector_families(obj):
                    labels = getattr(family, "_labelnames", None) or sorted(
                        {name for sample in family.samples for name in sample.labels}
                    )
                    found.setdefault(
                        family.name,
                        {
                            "name": family.name,
                            "type": family.type,
                            "labels": list(labels),
                            "help": family.documentation,
                        },
                    )
    return [found[name] for name in sorted(found)]


def _is_collector_class(obj: object, module: str) -> bool:
    """A class of ``module`` that subclasses prometheus-client's Collector protocol."""
    from prometheus_client.registry import Collector

    return (
        inspect.isclass(obj)
        and obj.__module__ == module
        and Collector in obj.__mro__[1:]
    )


def _collector_families(cls: type) -> list:
    """Families a collector class produces, collected from an instance holding no data."""
    for args in ((), (list,)):
        try:
            collector = cls(*args)
        except TypeError:
            continue
        return list(collector.collect())
    raise RuntimeError(
        f"cannot document collector {cls.__module__}.{cls.__name__}: make it constructible "
        "with no arguments or with a single callable returning no objects"
    )


#: The series a family of each type exposes, as PromQL names them (``_created`` left out).
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "gauge": ("",),
    "info": ("_info",),
}


class MetricsDirective(SphinxDirective):
    """A table of every metric the package exports, generated from the live modules."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        table = nodes.table()
        group = nodes.tgroup(cols=4)
        table += group
        for width in (35, 10, 15, 40):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row([["Series"], ["Type"], ["Labels"], ["Help"]])
        body = nodes.tbody()
        group += body
        for metric in package_metrics():
            series = [
                nodes.literal(text=metric["name"] + suffix)
                for suffix in SAMPLE_SUFFIXES.get(metric["type"], ("",))
            ]
            labels = [nodes.literal(text=label) for label in metric["labels"]] or ["(none)"]
            body += self._row([series, [metric["type"]], labels, [metric["help"]]])
        return [table]

    @staticmethod
    def _row(cells: list[list]) -> nodes.row:
        """A row; each cell is a list of nodes or strings, one paragraph each."""
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            for item in cell:
                if isinstance(item, nodes.Node):
                    entry += nodes.paragraph("", "", item)
                else:
                    entry += nodes.paragraph(text=str(item))
            row += entry
        return row


def setup(app: Sphinx) -> None:
    app.add_directive("toctree-optional", OptionalEntriesTocTree)
    app.add_directive("hub-resilience-configurables", ConfigurablesDirective)
    app.add_directive("hub-resilience-metrics", MetricsDirective)
