"""OmegaConf configs validated against structured dataclasses.

Every recipe is a YAML file merged onto a dataclass schema (after the recipe it names as its
`base:`, if any), then `key=value` overrides;
an unknown key or a wrong type raises `ConfigError` naming the key (and the file).
"""
from __future__ import annotations

import dataclasses
import enum
import typing
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = (getattr(err, "msg", None) or str(err)).splitlines()[0]
    return f"config key '{key}': {msg}" if key else msg


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Schema defaults <- YAML file <- CLI overrides, validated; returns a dataclass instance."""
    cfg = OmegaConf.structured(schema)
    source = "defaults"
    try:
        if path is not None:
            source = str(path)
            if not Path(path).is_file():
                raise ConfigError(f"config file {source!r} does not exist")
            for recipe in _recipe_chain(Path(path)):
                source = str(recipe)
                cfg = OmegaConf.merge(cfg, _without_base(OmegaConf.load(recipe)))
        if overrides:
            source = "command line"
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{_describe(err)} (in {source})") from None


def check_choices(config, prefix: str = "") -> None:
    """Every enum-typed field of a (nested) dataclass holds one of its enum's values: what loading
    a YAML file checks, for configs built in Python too. The error names the key and the values."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, kind, key = getattr(config, f.name), hints[f.name], f"{prefix}{f.name}"
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            try:
                kind(value)
            except ValueError:
                raise ConfigError(f"config key '{key}': {value!r} is not one of {[m.value for m in kind]}") from None
        elif dataclasses.is_dataclass(value):
            check_choices(value, key + ".")


BASE_KEY = "base"  # a recipe may name the recipe it modifies (a path relative to itself)


def _recipe_chain(path: Path) -> list[Path]:
    """The recipe and the recipes it is based on, the most basic first."""
    chain = [path.resolve()]
    while True:
        base = OmegaConf.load(chain[0]).get(BASE_KEY)
        if base is None:
            return chain
        parent = (chain[0].parent / str(base)).resolve()
        if not parent.is_file():
            raise ConfigError(f"config key '{BASE_KEY}': {str(base)!r} (in {chain[0]}) does not exist")
        if parent in chain:
            raise ConfigError(f"config key '{BASE_KEY}': recipes {[str(p) for p in chain]} are based on each other in a loop")
        chain.insert(0, parent)


def _without_base(recipe):
    recipe.pop(BASE_KEY, None)
    return recipe


def to_yaml(config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
