"""Typed settings: every algorithm's settings are one dataclass deriving from these.

`resolve()` merges defaults, a YAML file and `--set key=value` overrides, checking
each key exists and each value has the field's type, so a typo is one clear error.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from qvpo.errors import UserError


@dataclass
class CommonSettings:
    """Settings of the training loop that every algorithm accepts."""

    eval_every: int = 5000
    """Environment steps between evaluations (the paper: 10,000 at 1M steps)."""
    eval_episodes: int = 10
    """Episodes per evaluation (the paper's protocol)."""
    checkpoint_every: int = 10000
    """Environment steps between checkpoints; not part of a run's identity."""
    record_actions_every: int = 0
    """Every this many steps record a sample of the policy's actions at the current state (0: never)."""
    record_actions_n: int = 500
    """How many actions a recorded sample holds (figure 2's scatter)."""


@dataclass
class OffPolicySettings(CommonSettings):
    """Settings shared by replay-based algorithms."""

    warmup_steps: int = 10000
    """Uniform-random steps before learning starts; each algorithm sets its authors' value."""
    buffer_size: int = 1_000_000
    """Replay capacity (all the paper's off-policy methods: 1e6)."""
    batch_size: int = 256
    """Minibatch size (all the paper's off-policy methods: 256)."""
    gamma: float = 0.99
    """Discount factor."""


def widths(*sizes: int) -> list[int]:
    """The default of a hidden-layer widths setting (`hidden: list[int] = widths(256, 256)`): a list each
    settings instance owns (a dataclass field's default_factory)."""
    return field(default_factory=lambda: list(sizes))


NOT_IDENTITY = {"checkpoint_every"}
"""Settings that change neither what is learned nor what is recorded."""

SETTING_ALIASES: dict[str, str] = {
    "policy_lr": "actor_lr",  # SAC's CleanRL names, one vocabulary with the other algorithms
    "q_lr": "critic_lr",
}
"""Renamed settings, old name -> new name: configs, `--set` and committed runs' config.yaml written
with the old name keep loading (a rename is adopted by `qvpo verify`, see README "Run identity")."""


def rename_aliases(cls: type, values: dict[str, object]) -> dict[str, object]:
    """`values` with each old name of a setting of `cls` written as its new name."""
    types = field_types(cls)
    renamed = {}
    for key, value in values.items():
        new = SETTING_ALIASES.get(key)
        if new is not None and new in types and key not in types:
            if new in values:
                raise UserError(f"setting '{key}' is the old name of '{new}'; give one of them, not both")
            key = new
        renamed[key] = value
    return renamed


def _check_type(key: str, value: object, hint: object) -> object:
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        (item,) = set(typing.get_args(hint)) - {Ellipsis}
        if isinstance(value, (list, tuple)):
            return [_check_type(key, v, item) for v in value]
    elif origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise UserError(f"setting '{key}' must be one of {list(typing.get_args(hint))}, got {value!r}")
    else:  # pragma: no cover - a settings class with an unsupported annotation is a programming error
        raise TypeError(f"unsupported settings type {hint} for {key}")
    name = getattr(hint, "__name__", str(hint))
    raise UserError(f"setting '{key}' must be of type {name}, got {value!r}")


def field_types(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def parse_assignment(text: str) -> tuple[str, object]:
    """`key=value` with the value read as YAML (so 3, 0.5, true, [1, 2] have their types)."""
    if "=" not in text:
        raise UserError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_yaml_mapping(path: str | Path) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of setting: value")
    return data


def resolve(cls: type, overrides: dict[str, object]):
    """An instance of settings class `cls` with `overrides` applied and type-checked."""
    types = field_types(cls)
    values = {}
    for key, value in rename_aliases(cls, overrides).items():
        if key not in types:
            close = [k for k in types if k.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"unknown setting '{key}' for {cls.__name__}{hint}")
        values[key] = _check_type(key, value, types[key])
    settings = cls(**values)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        validate()
    require_positive(settings, "eval_every", "eval_episodes", "checkpoint_every")
    for key, hint in types.items():  # every list setting is a network's hidden-layer widths
        widths = getattr(settings, key)
        if typing.get_origin(hint) is list and (not widths or min(widths) <= 0):
            raise UserError(f"setting '{key}' must be a non-empty list of positive layer widths, got {widths}")
    return settings


def require_positive(settings, *keys: str) -> None:
    """One clear error for the first of `keys` whose value is not > 0 (NaN included)."""
    for key in keys:
        if not getattr(settings, key) > 0:
            raise UserError(f"setting '{key}' must be positive, got {getattr(settings, key)}")


def as_dict(settings) -> dict:
    return dataclasses.asdict(settings)
