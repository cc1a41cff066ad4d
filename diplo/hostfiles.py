"""The host owner's YAML files ($DIPLO_HOME/policy.yaml, config.yaml): read the same way,
with errors that name the file."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from diplo.errors import InputError


def yaml_mapping(text: str, where: str, shape: str) -> dict[str, Any]:
    """The YAML mapping in `text`; an InputError naming `where` otherwise (`shape` says
    what the file should look like)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{where}: {shape}")
    return data


def problems(exc: ValidationError) -> str:
    """pydantic's errors as `a.b: message; ...`."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
