"""``section.field=value`` overrides onto nested frozen dataclass configs (the CLI and recipes
use them): ``loss.rho=0.5``, ``rollout.temperature=0.8``, ``steps=100``. Values are parsed as
Python literals (numbers, strings, True/False/None); an unknown key raises, naming the fields
that exist."""

import ast
import dataclasses
import types
import typing


def _parse(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string: loss.strategy=random


def _set(data: dict, cls, path: list[str], value, full_key: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    head = path[0]
    if head not in fields:
        raise KeyError(f"unknown config key {full_key!r}: {cls.__name__} has {sorted(fields)}")
    section = _section_type(fields[head])
    if len(path) == 1:
        if section is not None:
            raise KeyError(f"{full_key!r} is a section; set one of its fields ({full_key}.<field>)")
        if isinstance(data[head], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        _check_type(value, typing.get_type_hints(cls)[head], full_key)
        data[head] = value
        return
    if section is None:
        raise KeyError(f"{full_key!r}: {head!r} is a value, not a section")
    _set(data[head], section, path[1:], value, full_key)


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is tuple:
        return isinstance(value, tuple | list) and all(_matches(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _check_type(value, hint, full_key: str) -> None:
    """An override of the wrong type fails here, before any run starts (``tensor_parallel=two``
    would otherwise surface as a confusing error deep in a launch)."""
    if not _matches(value, hint):
        name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        got = type(value).__name__
        raise TypeError(f"override {full_key}={value!r}: expected {name}, got {got}")


def _section_type(field: dataclasses.Field):
    """The dataclass type of a nested section (given by its default factory), else None."""
    if field.default_factory is dataclasses.MISSING:
        return None
    default = field.default_factory()
    return type(default) if dataclasses.is_dataclass(default) else None


def apply_overrides(config, overrides: list[str]):
    """A copy of ``config`` with every ``key=value`` applied, validated once at the end (so
    overrides that only make sense together can be given in any order)."""
    data = dataclasses.asdict(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like section.field=value")
        _set(data, type(config), key.split("."), _parse(text.strip()), key)
    return config_from_dict(type(config), data)


def config_from_dict(cls, data: dict):
    """Rebuild a (nested) config dataclass from ``dataclasses.asdict`` output, e.g. a run's
    saved ``run_config.json``. Unknown keys raise, naming them."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise KeyError(f"{cls.__name__} has no fields {unknown}; it has {sorted(fields)}")
    values = {}
    for name, value in data.items():
        section = _section_type(fields[name])
        if section is not None and isinstance(value, dict):
            value = config_from_dict(section, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)
