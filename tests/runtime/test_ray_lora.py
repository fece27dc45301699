"""A LoRA run on Ray (tiny policy, default pool shape, collective weight transport): the learner
trains and checkpoints only the adapters, the rollout workers sample with exactly the learner's
adapters, and a stopped run resumes from an adapter checkpoint to the same result."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from actors.driver import train
from maskrl.evaluation import evaluate, flat_metrics, held_out_prompts, load_checkpoint
from maskrl.metrics import read_metrics
from maskrl.models.lora import ADAPTER_FILE, LoraConfig, trainable_state
from tests.helpers import iterations, tiny_config


def lora_config(out):
    """The shipped base (a tiny random policy earns no reward, so nothing would train), 2 iterations
    of 2 prompts x 4."""
    cfg = tiny_config("base", out, weight_transport="collective")
    cfg.grpo = dataclasses.replace(cfg.grpo, prompts_per_iter=2, minibatch_pairs=8)
    # guided rollouts whose unconditional pass bypasses the adapters, on the workers and the learner alike
    sampling = dataclasses.replace(cfg.sampling, cfg_scale=2.0)
    return dataclasses.replace(cfg, iterations=2, sampling=sampling, lora=LoraConfig(rank=4, base_unconditional=True))


@pytest.mark.slow  # three Ray runs; LoRA over Ray is also in make test through test_ray_real_models
def test_lora_run_trains_sends_and_saves_only_adapters_and_resumes_exactly(ray_instance, tmp_path):
    whole = train(lora_config(tmp_path / "whole"))
    final = whole.checkpoint
    assert (final / ADAPTER_FILE).is_file() and not (final / "model.safetensors").exists()
    policy, base = load_checkpoint(str(final)), load_checkpoint("base").state_dict()
    frozen = {k.replace(".base_layer", ""): v for k, v in policy.state_dict().items() if "lora_" not in k}
    assert frozen.keys() == base.keys() and all(torch.equal(v, base[k]) for k, v in frozen.items())  # untouched
    assert any(v.abs().sum() > 0 for k, v in trainable_state(policy).items() if "lora_B" in k)  # adapters learned

    # the final held-out eval ran on rollout worker 0, with the adapters the collective broadcast
    # brought it: it equals the in-process eval of the saved checkpoint
    e = lora_config(tmp_path).eval
    expected = flat_metrics(evaluate(policy, held_out_prompts(e.prompts, e.seed), e.samples, e.sampling, e.seed))
    last = [m for m in read_metrics(whole.run) if "eval/overall" in m][-1]
    assert last["iteration"] == 2 and {k: last[k] for k in expected} == expected

    cfg = lora_config(tmp_path / "resumed")
    train(cfg, stop_after=1)
    resumed = train(cfg, resume=True)
    assert [m["reward/mean"] for m in iterations(resumed.run)] == [m["reward/mean"] for m in iterations(whole.run)]
    a, b = load_file(resumed.checkpoint / ADAPTER_FILE), load_file(final / ADAPTER_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
