"""The public Mask-GRPO code's loops, re-expressed on maskrl's model: the baselines the benches
measure maskrl against (one image at a time, one (trajectory, step) pair at a time, Python
lists of per-step tensors). Not a benchmark itself."""
from __future__ import annotations

import math

import torch

from maskrl.sampling import SamplingConfig
from maskrl.trajectory import TrajectoryBatch

def _cosine(t: torch.Tensor) -> torch.Tensor:
    return torch.cos(t * math.pi * 0.5)


def _gumbel_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    u = torch.zeros_like(t).uniform_(0, 1, generator=generator)
    return -torch.log(-torch.log(u.clamp(min=1e-20)).clamp(min=1e-20))


@torch.no_grad()
def reference_generate(policy, prompt: str, steps: int, cfg_scale: float, noise_scale: float, generator: torch.Generator):
    """One image, reference style. Returns the final tokens and the per-step Python lists."""
    n, mask_id = policy.num_image_tokens, policy.mask_code
    # per image: tokenise the prompt (and the empty prompt for CFG), build the attention mask
    text_ids = policy.encode_prompts([prompt])
    if cfg_scale > 0:
        uncond_ids = policy.null_prompts(1)
        attention_mask = policy.attention_mask(torch.cat([text_ids, uncond_ids]))
    else:
        uncond_ids, attention_mask = None, policy.attention_mask(text_ids)
    image_ids = torch.full((1, n), mask_id, dtype=torch.long)

    selected_indices_list, selected_ids_list, min_probs_list, masking_list, logprob_list = [], [], [], [], []
    sampled_ids = image_ids
    for step in range(steps):
        if uncond_ids is not None:
            cond_logits, uncond_logits = policy(
                torch.cat([text_ids, uncond_ids]), torch.cat([image_ids, image_ids]), attention_mask
            ).chunk(2)
            logits = (1 + cfg_scale) * cond_logits - cfg_scale * uncond_logits
        else:
            logits = policy(text_ids, image_ids, attention_mask)
        probs = logits.softmax(dim=-1)
        sampled_ids = torch.multinomial(probs.reshape(-1, logits.size(-1)), 1, generator=generator)[:, 0].view(*logits.shape[:-1])
        unknown_map = image_ids == mask_id
        sampled_ids = torch.where(unknown_map, sampled_ids, image_ids)

        ratio = 1.0 * (step + 1) / steps
        mask_ratio = _cosine(torch.tensor(ratio))
        selected_probs = torch.gather(probs, -1, sampled_ids.long()[..., None]).squeeze(-1)
        selected_probs = torch.where(unknown_map, selected_probs, torch.finfo(selected_probs.dtype).max)
        mask_len = (n * mask_ratio).floor().unsqueeze(0)
        mask_len = torch.max(torch.tensor([1]), torch.min(unknown_map.sum(dim=-1, keepdim=True) - 1, mask_len))

        # mask_by_random_topk: Gumbel noise on log-confidence, annealed linearly to 0
        temperature = noise_scale * (1.0 - ratio)
        confidence = torch.log(selected_probs.clamp(min=1e-20)) + temperature * _gumbel_like(selected_probs, generator)
        sorted_indices = torch.argsort(confidence, dim=-1)
        masking = torch.zeros((1, n), dtype=torch.bool)
        min_probs = torch.zeros(1)
        for i in range(1):
            k = int(mask_len[i].item())
            masking[i, sorted_indices[i, :k]] = True
            min_probs[i] = selected_probs[i, sorted_indices[i, k]]

        select_position = (unknown_map & ~masking).squeeze(0)
        selected_indices = torch.nonzero(select_position, as_tuple=False).squeeze(1)
        selected_ids = sampled_ids.squeeze(0)[select_position]
        # per-step behaviour log-prob of the newly revealed tokens, its own gather
        step_logprob = torch.log(probs[0, selected_indices, selected_ids]).sum()
        selected_indices_list.append(selected_indices.detach())
        selected_ids_list.append(selected_ids.detach())
        min_probs_list.append(min_probs.item())
        logprob_list.append(step_logprob.detach())

        image_ids = torch.where(masking, mask_id, sampled_ids)
        masking_list.append(torch.nonzero(masking.squeeze(0), as_tuple=False).squeeze(1).detach())
    return sampled_ids, selected_indices_list, selected_ids_list, min_probs_list, masking_list, logprob_list


def reference_lists(batch: TrajectoryBatch) -> list[dict]:
    """The same trajectories in the public Mask-GRPO code's layout (reference_generate):
    per trajectory the final tokens and, per step, the revealed indices and their tokens, the re-masked
    indices, the minimum confidence (a Python float) and the step's log-prob tensor."""
    records, logprob = [], batch.behaviour_logprob()
    for b in range(len(batch)):
        reveal, tokens = batch.reveal_step[b].long(), batch.tokens[b].long()
        steps = range(batch.steps)
        records.append({
            "tokens": tokens[None].clone(),
            "selected_indices": [torch.nonzero(reveal == t).squeeze(1) for t in steps],
            "selected_ids": [tokens[reveal == t] for t in steps],
            "min_probs": [float(batch.cutoff[b, t].exp()) for t in steps],
            "masking": [torch.nonzero(reveal > t).squeeze(1) for t in steps],
            "logprobs": [logprob[b, t].clone() for t in steps],
        })
    return records


def guided_logits(policy, text_ids, image_ids, attn, uncond_ids, cfg_scale):
    if uncond_ids is not None:
        cond, uncond = policy(torch.cat([text_ids, uncond_ids]), torch.cat([image_ids, image_ids]), attn).chunk(2)
        return (1 + cfg_scale) * cond - cfg_scale * uncond
    return policy(text_ids, image_ids, attn)


def reference_logprob(probs, used_idx, used_ids, masking_idx, min_probs, variant):
    """(B,) transition log-probs from (B, N, K) probs and (B, n) index tensors, reference style."""
    b = torch.arange(probs.shape[0])[:, None]
    out = torch.log(probs[b, used_idx, used_ids]).sum(dim=1)
    if variant == "candidate1":
        masked_probs = probs[b, masking_idx, :]
        low = masked_probs < min_probs
        out = out + torch.log((masked_probs * low).sum(dim=-1).clamp_min(1e-30)).sum(dim=1)
    return out


def reference_per_pair(policy, batch, lists, text_ids, uncond_ids, attn1, traj, step, sampling: SamplingConfig):
    """One forward + backward per (trajectory, step) pair at batch 1."""
    n, mask_id = policy.num_image_tokens, policy.mask_code
    variant = "candidate2" if sampling.variant == "ar" else sampling.variant  # AR: all masked -> same cost
    old = batch.behaviour_logprob()
    for i, t in zip(traj.tolist(), step.tolist()):
        rec = lists[i]
        image_ids = torch.full((1, n), mask_id, dtype=torch.long)
        for s in range(t):  # replay the trajectory up to step t
            image_ids[0, rec["selected_indices"][s]] = rec["selected_ids"][s]
        logits = guided_logits(policy, text_ids[i : i + 1], image_ids, attn1, uncond_ids, sampling.cfg_scale)
        probs = (logits / sampling.temperature).softmax(dim=-1)
        new_lp = reference_logprob(probs, rec["selected_indices"][t][None], rec["selected_ids"][t][None],
                                    rec["masking"][t][None], rec["min_probs"][t], variant)
        ratio = torch.exp(new_lp - old[i, t])
        adv = batch.advantage[i]
        loss = -torch.min(adv * ratio, adv * ratio.clamp(0.8, 1.28)).mean() / len(traj)
        loss.backward()


def reference_group(policy, batch, lists, text_ids, uncond_ids, attn_g, group: list[int], sampling: SamplingConfig):
    """The public code's loop: every step of one group in order, forward + backward at batch G."""
    n, mask_id, g = policy.num_image_tokens, policy.mask_code, len(group)
    variant = "candidate2" if sampling.variant == "ar" else sampling.variant
    image_ids = torch.full((g, n), mask_id, dtype=torch.long)
    for t in range(batch.steps):
        logits = guided_logits(policy, text_ids[group], image_ids, attn_g, uncond_ids, sampling.cfg_scale)
        probs = (logits / sampling.temperature).softmax(dim=-1)
        # the reference stacks per-sample index tensors (equal lengths: every image reveals the same count)
        used_idx = torch.stack([lists[i]["selected_indices"][t] for i in group])
        used_ids = torch.stack([lists[i]["selected_ids"][t] for i in group])
        masking = torch.stack([lists[i]["masking"][t] for i in group])
        min_probs = torch.tensor([lists[i]["min_probs"][t] for i in group]).view(g, 1, 1)
        new_lp = reference_logprob(probs, used_idx, used_ids, masking, min_probs, variant)
        ratio = torch.exp(new_lp - new_lp.detach())
        adv = batch.advantage[group]
        loss = -torch.min(adv * ratio, adv * ratio.clamp(0.8, 1.28)).mean() / batch.steps
        loss.backward()
        image_ids = image_ids.clone()
        image_ids[torch.arange(g)[:, None], used_idx] = used_ids  # state for the next step
