"""``section.field=value`` overrides onto nested frozen dataclass configs (the CLI and recipes
use them): ``loss.rho=0.5``, ``rollout.temperature=0.8``, ``steps=100``. Values are parsed as
Python literals (numbers, strings, True/False/None); an unknown key raises, naming the fields
that exist."""

import ast
import dataclasses


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
        if isinstance(data[head], float) and isinstance(value, int):
            value = float(value)
        data[head] = value
        return
    if section is None:
        raise KeyError(f"{full_key!r}: {head!r} is a value, not a section")
    _set(data[head], section, path[1:], value, full_key)


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
