"""The configuration of a Mask-GRPO run (single-process or on Ray)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from maskrl.cluster_config import ClusterConfig, LearnerConfig, PoolConfig  # noqa: F401  (the run config's parts)
from maskrl.branching import check_branch
from maskrl.config import ConfigError, check_choices, load_config
from maskrl.grpo import GRPOConfig, check_grpo
from maskrl.models.lora import LoraConfig, check_lora
from maskrl.run_model import ModelConfig, check_run_model
from maskrl.rewards.base import RewardConfig
from maskrl.sampling import SamplingConfig, check_sampling, evaluation_sampling


@dataclass
class EvalConfig:
    every: int = 10  # iterations between held-out ShapesEval runs (0: only before and after)
    prompts: int = 60
    samples: int = 2
    seed: int = 1234  # the held-out sample is fixed by this seed, not by the run's seed
    before: bool = True  # also evaluate the starting checkpoint (iteration 0)
    sampling: SamplingConfig = field(default_factory=evaluation_sampling)
    # more guidance scales to evaluate at, beside `sampling`'s (metrics `eval/cfg{s}/...`)
    cfg_scales: list[float] = field(default_factory=list)
    # at most this many prompts at the `cfg_scales` protocols, the first of the same held-out
    # sample (0: all `prompts`): a second protocol for comparison costs less time on a CPU
    extra_prompts: int = 0


@dataclass
class TrainConfig:
    checkpoint: str = "base"  # a maskrl checkpoint directory, or `base`; a real model: the `model` keys
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts_file: str = ""  # free-text prompts, one a line (a real model's run); empty: ShapesWorld's stream
    out: str = "runs/train"
    iterations: int = 20
    seed: int = 0
    threads: int = 2  # torch threads of the single-process trainer (train-local); Ray actors use their pool's CPUs
    reward: RewardConfig = field(default_factory=RewardConfig)  # name, options, runtime_env
    category_weights: dict[str, float] | None = None
    prompt_pool: int = 0  # > 0: train on the stream's first N prompts only (can the RL fit them?)
    track_kl: bool = True  # load the frozen reference policy to log KL even when kl_coef is 0
    checkpoint_every: int = 5
    grid_every: int = 5  # iterations between PNG sample grids
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)  # rank 0: full fine-tuning
    # rollouts sample as evaluation does: the unmasking schedule is the decision process
    sampling: SamplingConfig = field(default_factory=evaluation_sampling)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def check_train_config(cfg: TrainConfig) -> None:
    """What the enums cannot say, checked before anything starts (the error names the key): the
    choices of a config built in Python, counts that must be positive, the reward and its options
    (a registry that plug-ins extend, so not an enum)."""
    check_choices(cfg)
    for prefix, check, part in (("sampling", check_sampling, cfg.sampling),
                                ("eval.sampling", check_sampling, cfg.eval.sampling), ("grpo", check_grpo, cfg.grpo),
                                ("lora", check_lora, cfg.lora)):
        try:
            check(part)
        except ValueError as err:
            raise ConfigError(f"config key '{prefix}': {err}") from None
    for key, value in (("iterations", cfg.iterations), ("grpo.group_size", cfg.grpo.group_size),
                       ("grpo.prompts_per_iter", cfg.grpo.prompts_per_iter), ("checkpoint_every", cfg.checkpoint_every)):
        if value < 1:
            raise ConfigError(f"config key '{key}': must be at least 1, got {value}")
    try:
        check_branch(cfg.grpo.branch, cfg.sampling.steps)
    except ValueError as err:
        raise ConfigError(f"config key 'grpo.branch': {err}") from None
    check_run_model(cfg)
    if cfg.eval.extra_prompts < 0:
        raise ConfigError(f"config key 'eval.extra_prompts': must be 0 (all eval.prompts) or a prompt count, got {cfg.eval.extra_prompts}")
    if cfg.prompt_pool < 0:
        raise ConfigError(f"config key 'prompt_pool': must be 0 (the endless stream) or a prompt count, got {cfg.prompt_pool}")
    try:
        cfg.reward.validate()  # unknown reward or option: named, without building the model
    except ConfigError as err:
        raise ConfigError(f"reward: {err}") from None


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A run's config from a recipe and `key=value` overrides, fully checked: a bad value fails
    here, naming the key, before any pool or process starts."""
    cfg = load_config(TrainConfig, path, overrides)
    check_train_config(cfg)
    return cfg
