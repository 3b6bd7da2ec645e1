"""Validate zero-to-jupyterhub values overlays the way helm does, without a network.

Helm validates the *merged* values, so an overlay is deep-merged into the chart's default
``values.yaml`` first (maps merge key by key, everything else replaces, ``null`` removes a
key), then the result is validated against the chart's ``values.schema.yaml`` with a
draft-07 validator. The chart files are kept in ``../shared/z2jh`` (see its README).

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

#: The chart's values.yaml and values.schema.yaml (next to the repository checkout).
Z2JH_DIR = Path(__file__).resolve().parents[2] / "shared" / "z2jh"

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


def _load_yaml(name: str) -> Any:
    path = Z2JH_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the z2jh chart files are expected in ../shared/z2jh "
            "next to the repository"
        )
    return yaml.safe_load(path.read_text())


@lru_cache(maxsize=1)
def _chart_defaults() -> Any:
    return _load_yaml("values.yaml")


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft7Validator:
    schema = _load_yaml("values.schema.yaml")
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def chart_defaults() -> dict:
    """A fresh copy of the chart's default values."""
    return copy.deepcopy(_chart_defaults())


def merge_values(base: dict, overlay: dict) -> dict:
    """Helm's merge of user values into chart values, as a new dict.

    Maps merge key by key; lists and scalars replace; an overlay value of ``None`` deletes
    the key (helm's way to unset a chart default).
    """
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


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
    merged = merge_values(_chart_defaults(), overlay)
    errors = sorted(
        _validator().iter_errors(merged), key=lambda e: [str(p) for p in e.absolute_path]
    )
    if errors:
        raise InvalidValuesError([f"{_where(e)}: {e.message}" for e in errors])
