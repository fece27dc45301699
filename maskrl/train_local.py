"""The single-process Mask-GRPO trainer: setup -> loop -> cleanup, readable top to bottom.

It is also the reference the distributed learner is tested against: the Ray runtime runs
the same iteration pieces (maskrl.iteration) and the same update (maskrl.grpo).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from maskrl.config import to_yaml
from maskrl.evaluation import eval_metrics, generate, load_checkpoint
from maskrl.grids import write_grid
from maskrl.grpo import grpo_update
from maskrl.grpo.optim import adamw_step, make_optimizer
from maskrl.iteration import prepare, rollout_groups, score
from maskrl.metrics import MetricsLogger, summary_line
from maskrl.models import save_policy
from maskrl.models.lora import for_training
from maskrl.rewards import build_reward
from maskrl.run_model import as_started, check_run_files, prompt_stream
from maskrl.run_model import grid_prompts as run_grid_prompts
from maskrl.train_config import TrainConfig, check_train_config


def train_local(cfg: TrainConfig) -> Path:
    check_train_config(cfg)
    check_run_files(cfg)
    torch.set_num_threads(cfg.threads)
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    cfg = as_started(cfg)
    policy = for_training(load_checkpoint(cfg.checkpoint), cfg.lora, cfg.checkpoint)
    reference = load_checkpoint(cfg.checkpoint) if (cfg.grpo.kl_coef or cfg.track_kl) else None
    if reference is not None:
        reference.requires_grad_(False)
    optim, sched = make_optimizer(policy, cfg.grpo, cfg.iterations)
    reward, stream = build_reward(cfg.reward), prompt_stream(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    log = MetricsLogger(run)
    grid_prompts = run_grid_prompts(cfg)

    def grid(it: int) -> None:
        images = generate(policy, grid_prompts, 4, cfg.eval.sampling, cfg.eval.seed)
        log.image(it, "samples", write_grid(grid_prompts, images, run / "grids" / f"iter_{it:05d}.png"))

    base = eval_metrics(policy, cfg.eval) if cfg.eval.before and cfg.eval.prompts else {}
    log.log(0, base)
    grid(0)
    for it in tqdm(range(1, cfg.iterations + 1), desc="mask-grpo", dynamic_ncols=True):
        start = time.time()
        policy.eval()
        batch = rollout_groups(policy, stream.take(cfg.grpo.prompts_per_iter), cfg.grpo.group_size, cfg.sampling, gen, it - 1,
                               cfg.grpo.branch)
        batch, reward_parts = score(batch, reward, policy.decode_images)
        prepared = prepare(batch, cfg.grpo)
        metrics = {**prepared.metrics, **reward_parts}
        if len(prepared.batch):
            step = adamw_step(policy, optim, cfg.grpo.grad_clip)
            update = grpo_update(policy, reference, prepared.batch, cfg.grpo, cfg.sampling, step, gen)
            metrics.update({f"loss/{k}": v for k, v in update.items()})
        sched.step()
        metrics["time/iteration"] = time.time() - start
        if cfg.eval.prompts and (it == cfg.iterations or (cfg.eval.every and it % cfg.eval.every == 0)):
            metrics.update(eval_metrics(policy, cfg.eval))
        log.log(it, metrics)
        if (cfg.grid_every and it % cfg.grid_every == 0) or it == cfg.iterations:
            grid(it)
        tqdm.write(summary_line(it, metrics))
        if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
            save_policy(policy, run / "checkpoints" / f"iter_{it:05d}", extra={"iteration": it})
    log.close()
    final = run / "checkpoints" / f"iter_{cfg.iterations:05d}"
    (run / "summary.json").write_text(json.dumps({"base": base, "final": {k: v for k, v in metrics.items() if k.startswith("eval/")}}, indent=2))
    return final
