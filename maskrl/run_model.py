"""What a run starts from, trains on and can evaluate: a maskrl checkpoint of ShapesWorld's policy
(`checkpoint`, with ShapesWorld's endless prompt stream and held-out ShapesEval), or a real model's
release directories (`model.*` keys: Show-o or aMUSEd) trained on a prompt file of free text, its progress shown in
sample grids (ShapesEval scores ShapesWorld images only)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from maskrl.checkpoints import resolve_checkpoint
from maskrl.config import ConfigError
from maskrl.evaluation import held_out_prompts
from maskrl.iteration import PromptStream
from maskrl.models.showo_t2i import ShowoReleaseDirs, check_release_dirs, write_release_reference

GRID_PROMPTS = 6


class Family(StrEnum):
    maskrl = "maskrl"  # `checkpoint` names a maskrl checkpoint directory (or `base`)
    showo = "showo"  # the official Show-o release, from model_dir, vq_dir and tokenizer_dir
    amused = "amused"  # aMUSEd (amused-256 / amused-512) in diffusers' layout, all in model_dir


@dataclass
class ModelConfig:
    family: Family = Family.maskrl
    model_dir: str = ""  # showlab/show-o (256 px) or showlab/show-o-512x512; amused/amused-256 or -512
    vq_dir: str = ""  # Show-o: showlab/magvitv2, weights as one .safetensors file
    tokenizer_dir: str = ""  # Show-o: microsoft/phi-1_5
    resolution: int = 256  # Show-o (aMUSEd's follows from its transformer)
    dtype: str = "float32"  # bfloat16 on GPUs
    vq_config: dict = field(default_factory=dict)  # MagvitV2Config fields; empty: the release's architecture

    def release(self) -> ShowoReleaseDirs:
        return ShowoReleaseDirs(self.model_dir, self.vq_dir, self.tokenizer_dir, self.resolution, self.dtype,
                                dict(self.vq_config) or None)


def check_run_model(cfg) -> None:
    """The config's own consistency (no file is read): errors name the key."""
    if cfg.model.family == Family.maskrl:
        return
    if cfg.checkpoint != "base":
        raise ConfigError(f"config keys 'checkpoint' ({cfg.checkpoint!r}) and 'model.family' ({cfg.model.family}) both "
                          "name the starting model: keep one")
    if not cfg.prompts_file:
        raise ConfigError(f"config key 'prompts_file': a model.family={cfg.model.family} run trains on a prompt file "
                          "(free text, one prompt a line)")
    if cfg.eval.prompts:
        raise ConfigError(f"config key 'eval.prompts': held-out ShapesEval scores ShapesWorld policies only; set it to 0 "
                          f"for model.family={cfg.model.family} (the run's grids show its progress)")


def check_run_files(cfg) -> None:
    """The files the run reads before anything starts: the release directories, the prompt file."""
    if cfg.model.family == Family.showo:
        check_release_dirs(cfg.model.release())
    elif cfg.model.family == Family.amused:
        from maskrl.models.amused import check_amused_dir

        check_amused_dir(cfg.model.model_dir)
    else:
        resolve_checkpoint(cfg.checkpoint)
    if cfg.prompts_file:
        read_prompt_file(cfg.prompts_file)


def start_checkpoint(cfg) -> str:
    """The directory every worker loads the run's first weights from (for a release: a reference to
    its directories, written into the run directory)."""
    if cfg.model.family == Family.maskrl:
        return str(resolve_checkpoint(cfg.checkpoint))
    return str(write_model_reference(cfg.model, Path(cfg.out) / "model"))


def write_model_reference(model: ModelConfig, out: Path) -> Path:
    """A checkpoint directory naming a real model's release directories (nothing converted)."""
    if model.family == Family.showo:
        return write_release_reference(model.release(), out)
    from maskrl.models.amused import write_amused_reference  # diffusers is imported only for aMUSEd

    return write_amused_reference(model.model_dir, model.dtype, out)


def read_prompt_file(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config key 'prompts_file': {path!r} does not exist")
    lines = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"config key 'prompts_file': {path!r} holds no prompts")
    return lines


def prompt_stream(cfg, position: int = 0) -> PromptStream:
    texts = read_prompt_file(cfg.prompts_file) if cfg.prompts_file else None
    return PromptStream(cfg.seed, cfg.category_weights, position=position, pool=cfg.prompt_pool, texts=texts)


def grid_prompts(cfg) -> list[str]:
    """The prompts of the run's sample grids: the prompt file's first lines, or held-out ShapesWorld prompts."""
    if cfg.prompts_file:
        return read_prompt_file(cfg.prompts_file)[:GRID_PROMPTS]
    return [p.text for p in held_out_prompts(GRID_PROMPTS, cfg.eval.seed)]


def as_started(cfg):
    """The run's config as its workers use it: `checkpoint` is the directory of its first weights
    (a release reference for a real model: a maskrl checkpoint directory like any other)."""
    return replace(cfg, checkpoint=start_checkpoint(cfg), model=ModelConfig())
