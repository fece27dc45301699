"""LoRA (peft): only the adapters train, travel and are checkpointed; the base stays bit-identical;
adapter checkpoints load on top of the base they name and refuse any other."""
import json

import pytest
import torch
from safetensors.torch import load_file

from actors import weights
from maskrl.config import ConfigError
from maskrl.grpo import GRPOConfig, score_pairs
from maskrl.grpo.optim import adamw_step, make_optimizer
from maskrl.iteration import rollout_groups
from maskrl.models import load_policy, save_policy
from maskrl.models.lora import ADAPTER_FILE, LoraConfig, add_lora, check_lora, for_training, trainable_state
from maskrl.sampling import SamplingConfig, step_logprobs, text_inputs
from maskrl.train_config import load_train_config
from tests.helpers import tiny_checkpoint


@pytest.fixture
def base(tmp_path):
    return tiny_checkpoint(tmp_path / "base")


def logits(policy, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = torch.randint(0, policy.mask_code + 1, (3, policy.num_image_tokens), generator=gen)
    with torch.no_grad():
        return policy(policy.encode_prompts(["a red circle", "two blue squares", ""]), state)


def lora_policy(base, rank=4):
    return for_training(load_policy(base), LoraConfig(rank=rank), base)


def train_adapters(policy, steps=2):
    """A few AdamW steps on an arbitrary differentiable loss of the policy's logits."""
    optim, _ = make_optimizer(policy, GRPOConfig(lr=1e-2), 10)
    step = adamw_step(policy, optim, grad_clip=1.0)
    for i in range(steps):
        gen = torch.Generator().manual_seed(i)
        state = torch.randint(0, policy.mask_code + 1, (2, policy.num_image_tokens), generator=gen)
        step(policy(policy.encode_prompts(["a red circle", "two blue squares"]), state).square().mean())


def test_only_adapters_train_and_the_adapted_policy_starts_as_the_base(base):
    plain, adapted = load_policy(base), lora_policy(base)
    assert torch.equal(logits(plain), logits(adapted))  # B = 0 at the start
    torch.manual_seed(123)  # A's start does not depend on the global random state
    assert all(torch.equal(a, b) for a, b in zip(trainable_state(adapted).values(), trainable_state(lora_policy(base)).values()))
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable == set(trainable_state(adapted)) and all("lora_" in n for n in trainable)
    # every attention and MLP linear layer of both blocks carries an A and a B
    assert len(trainable) == 2 * 6 * 2
    optim, _ = make_optimizer(adapted, GRPOConfig(), 10)
    assert sum(p.numel() for g in optim.param_groups for p in g["params"]) == sum(t.numel() for t in trainable_state(adapted).values())
    frozen_before = {k: v.clone() for k, v in adapted.state_dict().items() if "lora_" not in k}
    train_adapters(adapted)
    after = adapted.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen_before.items())  # the base is bit-identical
    assert not torch.equal(logits(plain), logits(adapted))


def test_full_fine_tuning_trains_and_publishes_everything(base):
    policy = for_training(load_policy(base), LoraConfig(rank=0), base)
    assert set(trainable_state(policy)) == set(policy.state_dict())
    assert all(p.requires_grad for p in policy.parameters())


def test_adapter_checkpoint_holds_only_adapters_and_reloads_exactly(base, tmp_path):
    policy = lora_policy(base)
    train_adapters(policy)
    out = save_policy(policy, tmp_path / "ckpt")
    assert (out / ADAPTER_FILE).is_file() and not (out / "model.safetensors").exists()
    assert set(load_file(out / ADAPTER_FILE)) == set(trainable_state(policy))
    meta = json.loads((out / "config.json").read_text())["lora"]
    assert meta["rank"] == 4 and meta["base"]["checkpoint"] == str((tmp_path / "base").resolve())
    reloaded = load_policy(out)
    assert torch.equal(logits(reloaded), logits(policy))
    # resuming keeps the checkpoint's adapters when the run's settings are the same ...
    assert for_training(reloaded, LoraConfig(rank=4), out) is reloaded
    # ... and names the key when they are not
    with pytest.raises(ValueError, match="holds LoRA adapters {'rank': 4.*config key 'lora' says {'rank': 8"):
        for_training(load_policy(out), LoraConfig(rank=8), out)


def test_an_adapter_checkpoint_refuses_a_changed_base(base, tmp_path):
    policy = lora_policy(base)
    out = save_policy(policy, tmp_path / "ckpt")
    changed = load_policy(base)
    with torch.no_grad():
        changed.row_embed.add_(1.0)  # same architecture, other weights
    save_policy(changed, base)
    with pytest.raises(ValueError, match="model.safetensors has changed"):
        load_policy(out)


def test_unknown_target_module_and_bad_values_are_named(base, tmp_path):
    with pytest.raises(ValueError, match=r"lora.target_modules=\['attn_proj'\]"):
        add_lora(load_policy(base), LoraConfig(rank=4, target_modules=["attn_proj"]), base)
    with pytest.raises(ConfigError, match="config key 'lora': rank must be 0"):
        load_train_config("configs/shapes_cpu.yaml", ["lora.rank=-1", f"out={tmp_path}"])
    with pytest.raises(ConfigError, match="dropout"):  # a stochastic learner forward breaks recorded = recomputed
        load_train_config("configs/shapes_cpu.yaml", ["lora.dropout=0.1", f"out={tmp_path}"])


@pytest.mark.parametrize("adopt", [False, True], ids=["copy", "adopt"])
def test_published_weights_are_the_adapters_only(base, adopt):
    learner, worker = lora_policy(base), lora_policy(base)
    train_adapters(learner)
    payload = weights.to_numpy(trainable_state(learner))
    adapter_bytes = sum(a.nbytes for a in payload.values())
    assert adapter_bytes < 0.2 * sum(t.numel() * t.element_size() for t in learner.state_dict().values())
    (weights.adopt_numpy if adopt else weights.load_numpy)(worker, payload)
    assert torch.equal(logits(worker), logits(learner))
    with pytest.raises(ValueError, match="unexpected"):  # a full state dict is not what a LoRA worker takes
        weights.load_numpy(lora_policy(base), weights.to_numpy(learner.state_dict()))


def test_base_unconditional_guides_the_adapted_conditional_with_the_base_unconditional(base):
    """`lora.base_unconditional`: guidance is (1 + s) c_adapted - s u_base; the unconditional pass gets
    no gradient; the sampler's recorded log-probs equal the learner's; the flag survives a checkpoint."""
    plain = load_policy(base)
    adapted = for_training(load_policy(base), LoraConfig(rank=4, base_unconditional=True), base)
    train_adapters(adapted)
    sampling = SamplingConfig(steps=4, cfg_scale=3.0, variant="candidate1")
    text = adapted.encode_prompts(["a red circle", "two blue squares"])
    state = torch.randint(0, adapted.mask_code + 1, (2, adapted.num_image_tokens), generator=torch.Generator().manual_seed(5))
    null, mask = text_inputs(adapted, text, sampling)
    got = step_logprobs(adapted, text, null, state, mask, sampling)
    with torch.no_grad():
        expected = torch.log_softmax(4 * adapted(text, state) - 3 * plain(null, state), -1)
    torch.testing.assert_close(got, expected)
    got[..., 0].sum().backward()  # only the conditional pass carries a gradient, into the adapters only
    assert all(p.grad is None for n, p in adapted.named_parameters() if "lora_" not in n)
    adapted.zero_grad(set_to_none=True)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable == set(trainable_state(adapted))  # bypassing the adapters left what trains unchanged

    batch = rollout_groups(adapted, [(0, "a red circle"), (1, "three squares")], 2, sampling, torch.Generator().manual_seed(0), 0)
    traj, step = torch.arange(4).repeat_interleave(4), torch.arange(4).repeat(4)
    with torch.no_grad():
        recomputed, _ = score_pairs(adapted, batch, traj, step, sampling)
    torch.testing.assert_close(recomputed, batch.behaviour(traj, step), atol=1e-5, rtol=0)
    assert load_policy(save_policy(adapted, base + "-lora")).lora.base_unconditional
    with pytest.raises(ValueError, match="needs rank > 0"):
        check_lora(LoraConfig(base_unconditional=True))
