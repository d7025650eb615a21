"""Loading a config: defaults, then a YAML file, then CLI overrides, each value checked
against its field's type and allowed values; and writing the resolved config as JSON.

Every error names the key, the file and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from wsi_mil.config.fields import AFFECTS_OUTPUTS
from wsi_mil.config.sections import SECTIONS, Config
from wsi_mil.errors import ConfigError


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check (and gently convert) ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {key} = {value!r} should be {_describe(tp)}")
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(item, args[0], key, where) for item in items)
        if len(items) != len(args):
            raise ConfigError(f"{where}: {key} = {value!r} should have {len(args)} values")
        return tuple(_coerce(item, arg, key, where) for item, arg in zip(items, args, strict=True))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: {key} = {value!r} should be {_describe(tp)}")


def _build(cls: type, data: dict[str, Any], section: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{section}.{key}"
        if key not in names:
            raise ConfigError(f"{where}: unknown key {dotted!r}; allowed: {', '.join(sorted(names))}")
        values[key] = _coerce(value, hints[key], dotted, where)
        choices = getattr(cls, "CHOICES", {}).get(key)
        if choices and values[key] not in choices:
            raise ConfigError(f"{where}: {dotted} = {value!r}; allowed values: {', '.join(map(str, choices))}")
    instance = cls(**values)
    check = getattr(instance, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as error:
            raise ConfigError(f"{where}: {section}: {error}") from error
    return instance


def config_from_dict(data: dict[str, Any], *, where: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; allowed: {', '.join(SECTIONS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        section = data.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: section {name!r} must be a mapping")
        sections[name] = _build(cls, section, name, where)
    return Config(**sections)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` (value parsed as YAML) -> (section, key, value)."""
    import yaml

    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. tiling.target_mpp=1.0")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        return section, key, yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"--set {text!r}: the value is not valid YAML ({error}); e.g. tiling.target_mpp=[0.5,1.0]"
        ) from error


def load_config(
    path: str | Path | None = None,
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    sets: list[str] | None = None,
) -> Config:
    """Defaults, then the YAML file, then ``overrides`` (named CLI flags), then ``--set`` pairs."""
    import yaml

    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    merged = {name: dict(data.get(name) or {}) for name in SECTIONS}
    merged.update({k: v for k, v in data.items() if k not in SECTIONS})
    for section, values in (overrides or {}).items():
        merged.setdefault(section, {}).update(values)
    for text in sets or []:
        section, key, value = parse_override(text)
        merged.setdefault(section, {})[key] = value
    if sets:
        where = f"{where} + --set"
    return config_from_dict(merged, where=where)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_to_json(config: Any) -> str:
    return json.dumps(config_to_dict(config), indent=2, sort_keys=True)


def neutral_keys() -> frozenset[str]:
    """``section.key`` of every field declared :func:`~wsi_mil.config.fields.neutral_field`: keys
    that change how a run is done, not what it writes, so a rerun into its run folder may change them."""
    return frozenset(
        f"{name}.{f.name}"
        for name, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if not f.metadata.get(AFFECTS_OUTPUTS, True)
    )
