"""OmegaConf configs validated against structured dataclasses.

Every recipe is a YAML file merged onto a dataclass schema, then `key=value` overrides;
an unknown key or a wrong type raises `ConfigError` naming the key (and the file).
"""
from __future__ import annotations

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
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        if overrides:
            source = "command line"
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{_describe(err)} (in {source})") from None


def to_yaml(config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
