"""The reward interface, the registry of rewards, and the config that selects one.

A reward takes a batch of decoded images (ShapesWorld's (B, 16, 16) palette grids, or a real
model's (B, H, W, 3) RGB images) and their prompts, and returns one float per image plus optional named components for logging:

    reward = build_reward("clip_score", arch="ViT-B-32", checkpoint="/models/vit-b-32.safetensors")
    out = reward(images, prompts)          # RewardOutput(scores (B,), components {name: (B,)})

A reward is selected and configured by a `RewardConfig` (`name`, `options`, `runtime_env`),
loadable from YAML with `load_reward_config` (see configs/rewards/). Each reward declares its
options as a dataclass (`Options`); `build_reward` validates the options against it, so an
unknown key, a wrong type or a missing mandatory value is an error that names the key.

Non-finite scores: a reward may produce NaN or +-inf for an image (a broken model, fp16
overflow, ...). They are never replaced by a number: `RewardOutput` turns every non-finite
score into NaN, and the trainer (`maskrl.iteration.prepare`) drops those samples from their
groups and counts them as `reward/nonfinite`.

Isolation: `RewardConfig.runtime_env` carries a Ray runtime_env (pip packages, env vars, ...)
for the reward worker actors that run this reward; `RewardConfig.ray_runtime_env()` returns
it merged with the runtime_envs of a composite's components. maskrl itself never imports Ray.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from maskrl.config import ConfigError, load_config


@dataclass
class RewardOutput:
    scores: np.ndarray  # (B,) float32; non-finite values are NaN and are never trained on
    components: dict[str, np.ndarray] = field(default_factory=dict)  # named (B,) parts, for logging; non-finite -> NaN

    def __post_init__(self):
        scores = np.asarray(self.scores, dtype=np.float32)
        if scores.ndim != 1:
            raise ValueError(f"reward scores must have shape (B,), got {scores.shape}")
        # NaN marks "no reward for this image"; +-inf is no more trainable than NaN.
        self.scores = np.where(np.isfinite(scores), scores, np.float32(np.nan)).astype(np.float32)
        comps = {}
        for name, value in self.components.items():
            value = np.asarray(value, dtype=np.float32)
            if value.shape != scores.shape:
                raise ValueError(f"reward component {name!r} has shape {value.shape}, expected {scores.shape}")
            comps[name] = np.where(np.isfinite(value), value, np.float32(np.nan)).astype(np.float32)
        self.components = comps


class Reward(Protocol):
    name: str

    def __call__(self, images: np.ndarray, prompts: list[str]) -> RewardOutput:
        """(B, 16, 16) palette grids and their prompts -> one score per image."""


def check_batch(images: np.ndarray, prompts: list[str], palette_only: bool = False) -> np.ndarray:
    """The images as a uint8 array, checked against the prompts: ShapesWorld's (B, 16, 16) palette
    grids, or (unless `palette_only`) a real model's (B, H, W, 3) RGB images."""
    images = np.asarray(images)
    rgb = images.ndim == 4 and images.shape[-1] == 3 and not palette_only
    if not rgb and (images.ndim != 3 or images.shape[1:] != (16, 16)):
        kinds = "(B, 16, 16) palette grids" + ("" if palette_only else " or (B, H, W, 3) RGB images")
        raise ValueError(f"this reward takes {kinds}, got an array of shape {images.shape}")
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    return images.astype(np.uint8, copy=False)


# -- errors -------------------------------------------------------------------------------------


class MissingCheckpointError(FileNotFoundError):
    """A reward's weights are not where its config says; the message says what to pass."""

    def __init__(self, reward: str, option: str, path: str | Path, how: str):
        self.path = str(path)
        super().__init__(f"reward {reward!r}: {option} {self.path!r} does not exist. {how}")


def require_path(reward: str, option: str, path: str | Path | None, how: str, *, directory: bool = False) -> Path:
    """`path` as a Path, or a `MissingCheckpointError` naming it and saying how to provide it."""
    if path is None or str(path) == "":
        raise MissingCheckpointError(reward, option, "", f"It is not set. {how}")
    p = Path(path).expanduser()
    if not (p.is_dir() if directory else p.is_file()):
        raise MissingCheckpointError(reward, option, p, how)
    return p


def require_safetensors(reward: str, option: str, path: Path) -> Path:
    """Weights load from safetensors only (a pickle runs code when loaded); say how to convert."""
    if path.suffix != ".safetensors":
        raise ValueError(
            f"reward {reward!r}: {option} {str(path)!r} is not a .safetensors file. maskrl never unpickles a "
            f"checkpoint; convert it once with `python -m maskrl.rewards.convert {path} "
            f"{path.with_suffix('.safetensors')}` and point {option} at the result."
        )
    return path


# -- the registry ---------------------------------------------------------------------------------

_REGISTRY: dict[str, str | type] = {
    "shapes_rule": "maskrl.rewards.shapes_rule:ShapesRuleReward",
    "shapes_foreground": "maskrl.rewards.shapes_foreground:ShapesForegroundReward",
    "clip_score": "maskrl.rewards.clip:ClipScoreReward",
    "hpsv2": "maskrl.rewards.clip:HPSv2Reward",
    "aesthetic": "maskrl.rewards.clip:AestheticReward",
    "shapes_clip": "maskrl.rewards.clip:ShapesClipReward",
    "pickscore": "maskrl.rewards.pickscore:PickScoreReward",
    "composite": "maskrl.rewards.composite:CompositeReward",
}


@dataclass
class NoOptions:
    """A reward without options."""


def register_reward(name: str, target: type | str) -> None:
    """Make a reward class (or "module:Class") selectable by `name` in configs.

    The class is built as `cls(**options)`; its `Options` dataclass (if any) validates them.
    """
    _REGISTRY[name] = target


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def reward_class(name: str) -> type:
    """The class of a registered reward, or of a plug-in named "module:Class" (importable wherever
    the reward workers run, e.g. shipped in the reward's runtime_env): no registration needed."""
    if name not in _REGISTRY and ":" not in name:
        raise ConfigError(f"config key 'name': unknown reward {name!r}; available: {available_rewards()}, "
                          "or a plug-in as 'module:Class'")
    target = _REGISTRY.get(name, name)
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"config key 'name': reward {name!r} cannot be imported: {err}") from None
        _REGISTRY[name] = target
    return target


def validate_options(name: str, options: Mapping[str, Any] | None, where: str = "options"):
    """The options of reward `name` as its `Options` dataclass; errors name the offending key."""
    schema = getattr(reward_class(name), "Options", NoOptions)
    options = {} if options is None else options
    if is_dataclass(options):
        options = OmegaConf.structured(options)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), options)
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = (getattr(err, "msg", None) or str(err)).splitlines()[0]
        if key:
            msg = f"config key '{where}.{key}': {msg}"
        allowed = [f.name for f in fields(schema)]
        raise ConfigError(f"reward {name!r}: {msg} (options of {name!r}: {allowed or 'none'})") from None


def options_dict(options) -> dict[str, Any]:
    """A validated Options dataclass as constructor keyword arguments (one level deep)."""
    return {f.name: getattr(options, f.name) for f in fields(options)}


# -- the config -----------------------------------------------------------------------------------


@dataclass
class RewardConfig:
    """Which reward, its options (validated against the reward's `Options`), and its Ray runtime_env.

    YAML:
        name: clip_score
        options: {arch: ViT-B-32, checkpoint: /models/clip/vit-b-32.safetensors}
        runtime_env: {pip: [open_clip_torch==3.3.0], env_vars: {HF_HUB_OFFLINE: "1"}}
    """

    name: str = "shapes_rule"
    options: dict[str, Any] = field(default_factory=dict)
    # A Ray runtime_env for the reward worker actors (https://docs.ray.io/en/latest/ray-core/handling-dependencies.html):
    # heavy reward dependencies stay out of the learner's environment. maskrl only carries it.
    runtime_env: Optional[dict[str, Any]] = None

    def validate(self):
        """The reward's typed options; raises `ConfigError` naming a bad key. Builds no model."""
        options = validate_options(self.name, self.options)
        for sub in getattr(options, "components", None) or []:
            RewardConfig(sub.name, sub.options, sub.runtime_env).validate()
        return options

    def build(self) -> Reward:
        return build_reward(self)

    def ray_runtime_env(self) -> dict[str, Any] | None:
        """This reward's runtime_env merged with its components' (for a composite); None if none."""
        envs = [self.runtime_env]
        options = self.validate()
        for sub in getattr(options, "components", None) or []:
            envs.append(RewardConfig(sub.name, sub.options, sub.runtime_env).ray_runtime_env())
        return merge_runtime_envs(*envs)


def merge_runtime_envs(*envs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Union of runtime_envs: pip packages concatenated (deduplicated), env_vars merged; any other
    key must agree. A conflict is an error naming the key."""
    merged: dict[str, Any] = {}
    for env in envs:
        for key, value in (env or {}).items():
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            if key not in merged:
                merged[key] = list(value) if key == "pip" and isinstance(value, (list, tuple)) else value
            elif key == "pip" and isinstance(merged[key], list) and isinstance(value, (list, tuple)):
                merged[key] += [p for p in value if p not in merged[key]]
            elif key == "env_vars":
                for var, val in value.items():
                    if merged[key].get(var, val) != val:
                        raise ConfigError(f"runtime_env.env_vars.{var}: components disagree ({merged[key][var]!r} vs {val!r})")
                    merged[key] = {**merged[key], var: val}
            elif merged[key] != value:
                raise ConfigError(f"runtime_env.{key}: components disagree ({merged[key]!r} vs {value!r})")
    return merged or None


def load_reward_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RewardConfig:
    """A `RewardConfig` from YAML (+ `key=value` overrides), with its options validated."""
    cfg = load_config(RewardConfig, path, overrides)
    try:
        cfg.validate()
    except ConfigError as err:
        source = str(path) if path is not None else "defaults"
        raise ConfigError(f"{err} (in {source}{' + command line' if overrides else ''})") from None
    return cfg


def build_reward(spec: str | RewardConfig | Mapping[str, Any], **options) -> Reward:
    """A reward from its name and options, or from a `RewardConfig` (or a mapping of one).

    `build_reward("shapes_rule")`, `build_reward("clip_score", checkpoint=...)`,
    `build_reward(load_reward_config("configs/rewards/composite.yaml"))`. Keyword options
    override the config's. Weights load only from local paths.
    """
    if isinstance(spec, str):
        cfg = RewardConfig(name=spec, options=dict(options))
    else:
        if isinstance(spec, Mapping) or OmegaConf.is_config(spec):
            spec = load_config_from_mapping(spec)
        base = OmegaConf.to_container(spec.options) if OmegaConf.is_config(spec.options) else dict(spec.options or {})
        cfg = RewardConfig(name=spec.name, options={**base, **options}, runtime_env=spec.runtime_env)
    typed = validate_options(cfg.name, cfg.options)
    return reward_class(cfg.name)(**options_dict(typed))


def load_config_from_mapping(mapping: Mapping[str, Any]) -> RewardConfig:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RewardConfig), mapping))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = (getattr(err, "msg", None) or str(err)).splitlines()[0]
        raise ConfigError(f"config key '{key}': {msg}" if key else msg) from None
