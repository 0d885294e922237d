"""The config root: YAML presets in ``configs/`` plus ``--set dotted.key=value`` overrides, validated once.

Every field carries a description; an invalid file or override fails with one line naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rollout.config import EnvConfig, RolloutConfig


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the field and the reason."""


class ToolRLConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("toolrl", description="Run name: the run directory is runs/<name>.")
    env: EnvConfig = Field(default_factory=EnvConfig, description="Tool environment, splits and reward.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="How episodes are sampled.")


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for index, key in enumerate(parents):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config error: {'.'.join(parents[: index + 1])}: is not a section, cannot set {dotted}")
        node = child
    node[leaf] = value


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "(root)"
    if error["type"] == "extra_forbidden":
        return f"config error: {where}: unknown field"
    got = error.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict) else ""
    return f"config error: {where}: {error['msg']}{shown}"


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ToolRLConfig:
    """Load a YAML preset (or the defaults), apply ``key=value`` overrides, validate."""
    tree: dict = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config error: cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config error: {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config error: {path} must be a mapping of sections, not {type(loaded).__name__}")
        tree = loaded or {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"config error: override {override!r} must look like section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    try:
        return ToolRLConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None


def dump_config(config: ToolRLConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
