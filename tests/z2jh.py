"""Validate zero-to-jupyterhub values overlays the way helm does, without a network.

Helm validates the *merged* values, so an overlay is deep-merged into the chart's default
``values.yaml`` first (maps merge key by key, everything else replaces, ``null`` removes a
key), then the result is validated against the chart's ``values.schema.yaml`` with a
draft-07 validator. The chart files are kept in ``../shared/z2jh`` (see its README); a
checkout elsewhere finds them through ``HUB_RESILIENCE_Z2JH_DIR``, a ``shared/z2jh`` beside
any folder above it, or the workspace's ``/work/shared/z2jh``. The search and helm's merge
are the package's (:mod:`hub_resilience.tools.z2jh_chart`, which ``check-config`` uses).

Use from a test::

    from tests.z2jh import validate_values_overlay
    validate_values_overlay({"hub": {"concurrentSpawnLimit": 60}})  # raises if invalid
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from hub_resilience.tools.z2jh_chart import Z2JH_DIR_ENV, candidate_dirs, merge_values

__all__ = [
    "Z2JH_DIR_ENV", "InvalidValuesError", "chart_defaults", "merge_values",
    "validate_values_overlay", "z2jh_candidates", "z2jh_dir",
]

#: Where the workspace keeps the chart files when the checkout is not beside them.
WORKSPACE_Z2JH_DIR = Path("/work/shared/z2jh")

REPO_ROOT = Path(__file__).resolve().parents[1]

#: How many schema errors a message lists before it summarises the rest.
MAX_LISTED_ERRORS = 20


class InvalidValuesError(ValueError):
    """The merged values do not satisfy the chart's schema; the message lists every error."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        listed = errors[:MAX_LISTED_ERRORS]
        more = len(errors) - len(listed)
        lines = [f"z2jh values overlay fails the chart schema ({len(errors)} error(s)):"]
        lines += [f"  - {e}" for e in listed]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


def z2jh_candidates() -> list[Path]:
    """Folders that may hold the chart files, in the order they are tried.

    The workspace keeps them in ``../shared/z2jh`` beside the checkout, but CI and a fresh
    clone may check the repository out somewhere else; the environment variable wins so a
    run can always point at its own copy.
    """
    return [*candidate_dirs(REPO_ROOT), WORKSPACE_Z2JH_DIR]


@lru_cache(maxsize=1)
def z2jh_dir() -> Path:
    """The first candidate folder that holds both chart files; a clear error if none does."""
    candidates = z2jh_candidates()
    for folder in candidates:
        if (folder / "values.yaml").is_file() and (folder / "values.schema.yaml").is_file():
            return folder
    tried = "\n".join(f"  - {folder}" for folder in candidates)
    raise FileNotFoundError(
        "the z2jh chart files (values.yaml, values.schema.yaml) were not found; set "
        f"{Z2JH_DIR_ENV} to the folder that holds them. Tried:\n{tried}"
    )


def _load_yaml(name: str, folder: Path | None = None) -> Any:
    return yaml.safe_load(((folder or z2jh_dir()) / name).read_text())


@lru_cache(maxsize=1)
def _chart_defaults() -> Any:
    return _load_yaml("values.yaml")


@lru_cache(maxsize=2)
def _validator(folder: Path | None = None) -> jsonschema.Draft7Validator:
    """The draft-07 validator of the chart schema in ``folder`` (default: the main branch's;
    ``z2jh_dir() / "4.4.0"`` for the released chart's)."""
    schema = _load_yaml("values.schema.yaml", folder)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(merged: dict, folder: Path | None = None) -> list[str]:
    """Each error of already merged values against the schema in ``folder``, with its place
    in the values, e.g. ``scheduling.userPlaceholder.replicas: '3' is not of type
    'integer'``."""
    errors = sorted(
        _validator(folder).iter_errors(merged), key=lambda e: [str(p) for p in e.absolute_path]
    )
    return [f"{_where(e)}: {e.message}" for e in errors]


def chart_defaults() -> dict:
    """A fresh copy of the chart's default values."""
    return copy.deepcopy(_chart_defaults())


def _where(error: jsonschema.ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return path.lstrip(".") or "(top level)"


def validate_values_overlay(overlay: dict) -> None:
    """Raise :class:`InvalidValuesError` unless ``overlay`` merged into the chart is valid.

    The message lists each error with its place in the values, e.g.
    ``scheduling.userPlaceholder.replicas: '3' is not of type 'integer'``.
    """
    if not isinstance(overlay, dict):
        raise InvalidValuesError([f"the overlay must be a mapping, got {type(overlay).__name__}"])
    errors = schema_errors(merge_values(_chart_defaults(), overlay))
    if errors:
        raise InvalidValuesError(errors)
