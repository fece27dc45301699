"""Batched MaskGIT/Show-o decoding that records compact trajectories.

Each step: one forward pass (cond and uncond stacked when CFG is on), sample a token for
every masked position, score each by log-confidence plus Gumbel noise annealed to 0
(without noise background is the most confident token everywhere and objects never
start), keep the most confident and re-mask the rest so that the cosine schedule's count
stays masked. What is recorded is enough to rebuild every intermediate state: final
tokens, the step that revealed each position, per step the cutoff (the smallest noisy
log-confidence among the tokens revealed at that step) and the behaviour log-prob terms
of the transition for the configured variant (maskrl.transition), computed inside the
loop: a step's (B, N, K) log-probs are dropped as soon as its terms are known. The
``ar`` variant also records the tokens sampled at every step.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum

import torch

from maskrl.branching import StepNoise
from maskrl.models.lora import adapters_off, has_lora
from maskrl.models.policy import MaskedPolicy, guidance_active, guided_logits
from maskrl.schedule import masked_counts
from maskrl.transition import Variant, check_variant, needs_step_tokens, transition_terms

class Precision(StrEnum):
    """The policy's forward pass: fp32, or bf16 under autocast (AMX / tensor cores); log-softmax
    and log-probs stay fp32. Sampler and learner share it, so recorded = recomputed holds."""
    float32 = "float32"
    bfloat16 = "bfloat16"


class NoiseSchedule(StrEnum):
    linear = "linear"  # sigma_0 * (1 - (t+1)/T)
    compound = "compound"  # Show-o's: sigma_0 * prod_{s<=t} (1 - (s+1)/T)


NOISE_SCHEDULES = tuple(NoiseSchedule)


@dataclass
class SamplingConfig:
    steps: int = 16
    cfg_scale: float = 0.0  # guidance scale s, in the policy's formula (its preset: Show-o's (1 + s) c - s u)
    temperature: float = 1.0  # softmax temperature of the token distribution
    noise_scale: float = 3.0  # Gumbel noise on log-confidence at step 0, annealed to 0
    noise_schedule: NoiseSchedule = NoiseSchedule.linear
    variant: Variant = Variant.candidate1  # transition log-prob recorded as behaviour log-prob
    micro_batch: int = 16  # images per forward; on CPU larger batches are no faster per image
    precision: Precision = Precision.float32


def evaluation_sampling() -> SamplingConfig:
    """The protocol every held-out figure uses, `maskrl generate`'s defaults: 16 steps, CFG 3
    (measured best for the shipped base by bench/study_sampling.py), linear noise 3."""
    return SamplingConfig(steps=16, cfg_scale=3.0)


@dataclass
class Rollout:
    """Compact trajectories of B images: everything the learner needs, nothing more."""

    tokens: torch.Tensor  # (B, N) int64 final codes
    reveal_step: torch.Tensor  # (B, N) int64 step at which each position was revealed
    cutoff: torch.Tensor  # (B, T) float32 log-confidence threshold of each step
    behaviour_terms: torch.Tensor  # (B, T, N + 1) float32 per-unit log-probs (maskrl.transition)
    step_tokens: torch.Tensor  # (B, T, N) int64 tokens sampled at each step (ar), else (B, 0, N)


def check_sampling(cfg: SamplingConfig) -> None:
    """Refuse values the sampler cannot use, naming the field."""
    check_variant(cfg.variant)
    if cfg.noise_schedule not in NOISE_SCHEDULES:
        raise ValueError(f"unknown noise_schedule {cfg.noise_schedule!r}; expected one of {[str(n) for n in NOISE_SCHEDULES]}")


def noise_at(step: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Gumbel scale on the log-confidences at each step, annealed from noise_scale to 0."""
    decay = 1 - (torch.arange(cfg.steps, dtype=torch.float64) + 1) / cfg.steps
    if cfg.noise_schedule == "compound":
        decay = decay.cumprod(0)
    return cfg.noise_scale * decay.to(step.device)[step.long()]


def distinct_rows(text_ids: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each distinct (prompt, state) pair, in order; each row's pair among them).

    The policy's logits are a function of a row's prompt and state alone, so equal rows are computed
    once: a branched group shares its state up to its branch step (16 rows, one forward), a
    prompt's samples share the all-mask state at step 0, and the learner scores a group's branch
    step on one state. Indexing the result back gives each row its logits and, in the learner, sums
    the rows' gradients into the one computation."""
    distinct, inverse = torch.unique(torch.cat([text_ids, state], dim=1), dim=0, return_inverse=True)
    rows = torch.arange(len(inverse), device=inverse.device)
    first = torch.full((len(distinct),), len(rows), device=inverse.device).scatter_reduce(0, inverse, rows, "amin")
    order = first.argsort()  # keep the rows' own order
    return first[order], order.argsort()[inverse]


def step_logprobs(policy: MaskedPolicy, text_ids, null_ids, state, attn_mask, cfg: SamplingConfig) -> torch.Tensor:
    """(B, N, K) log-probs of the step's token distribution (CFG and temperature applied).

    With LoRA's `base_unconditional`, guidance's unconditional pass is the base model's (adapters
    bypassed, no gradient): the policy's adapters move the conditional model alone."""
    guided = guidance_active(cfg.cfg_scale, policy.preset.guidance)
    device = next(policy.parameters()).device.type
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.precision == Precision.bfloat16)

    def forward(ids, state, mask):
        first, inverse = distinct_rows(ids, state)
        with autocast:
            return policy(ids[first], state[first], None if mask is None else mask[first]).float()[inverse]

    if guided and has_lora(policy) and policy.lora.base_unconditional:
        cond_mask, uncond_mask = attn_mask.chunk(2) if attn_mask is not None else (None, None)
        with torch.no_grad(), adapters_off(policy):
            uncond = forward(null_ids, state, uncond_mask)
        logits = guided_logits(forward(text_ids, state, cond_mask), uncond, cfg.cfg_scale, policy.preset.guidance)
    elif guided:
        logits = forward(torch.cat([text_ids, null_ids]), torch.cat([state, state]), attn_mask)
        logits = guided_logits(*logits.chunk(2), cfg.cfg_scale, policy.preset.guidance)
    else:
        logits = forward(text_ids, state, attn_mask)
    return torch.log_softmax(logits / cfg.temperature, dim=-1)


def text_inputs(policy: MaskedPolicy, text_ids: torch.Tensor, cfg: SamplingConfig):
    """(null ids or None, attention mask) for a batch, built once and reused every step."""
    if not guidance_active(cfg.cfg_scale, policy.preset.guidance):
        return None, policy.attention_mask(text_ids)
    null_ids = policy.null_prompts(len(text_ids)).to(text_ids.device)
    return null_ids, policy.attention_mask(torch.cat([text_ids, null_ids]))


def independent_draws(probs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) tokens drawn from (B, N, K) `probs` and (B, N) uniforms for the reveal-order noise,
    fresh from `generator` for every row."""
    b, n, _ = probs.shape
    sampled = torch.multinomial(probs.reshape(b * n, -1), 1, generator=generator).reshape(b, n)
    return sampled, torch.rand(b, n, generator=generator).clamp(1e-20, 1 - 1e-7)


def inverse_cdf_draws(probs: torch.Tensor, noise: StepNoise, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and reveal-order uniforms from given per-step uniforms (common random numbers):
    equal rows with equal numbers draw equal tokens."""
    cdf = probs.cumsum(-1)
    sampled = torch.searchsorted(cdf, noise.token[t][..., None]).squeeze(-1).clamp_max(probs.shape[-1] - 1)
    return sampled, noise.order[t]


@torch.no_grad()
def sample(policy: MaskedPolicy, prompts: list[str], cfg: SamplingConfig, generator: torch.Generator,
           noise: StepNoise | None = None) -> Rollout:
    """Decode one image per prompt, `cfg.micro_batch` images per forward pass; with `noise`
    (maskrl.branching), every random number is given per row and `generator` is not used."""
    parts = [_sample_batch(policy, prompts[i : i + cfg.micro_batch], cfg, generator,
                           noise.rows(slice(i, i + cfg.micro_batch)) if noise is not None else None)
             for i in range(0, len(prompts), cfg.micro_batch)]
    return Rollout(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Rollout)})


def _sample_batch(policy: MaskedPolicy, prompts: list[str], cfg: SamplingConfig, generator: torch.Generator,
                  given: StepNoise | None) -> Rollout:
    check_sampling(cfg)
    if cfg.steps > policy.num_image_tokens:
        raise ValueError(f"sampling steps={cfg.steps} exceeds the {policy.num_image_tokens} image tokens to reveal")
    dev = next(policy.parameters()).device  # random draws stay on the CPU generator: seeded anywhere
    text_ids = policy.encode_prompts(prompts).to(dev)
    null_ids, attn_mask = text_inputs(policy, text_ids, cfg)
    b, n, steps = len(prompts), policy.num_image_tokens, cfg.steps
    state = torch.full((b, n), policy.mask_code, dtype=torch.long, device=dev)
    reveal = torch.full((b, n), steps, dtype=torch.long, device=dev)
    cutoff = torch.zeros(b, steps, device=dev)
    terms, drawn = [], []
    noise = noise_at(torch.arange(steps), cfg).float().to(dev)
    for t, keep_masked in enumerate(masked_counts(n, steps, policy.preset.mask_rounding)):
        logp = step_logprobs(policy, text_ids, null_ids, state, attn_mask, cfg)
        masked = state == policy.mask_code
        probs = logp.exp().cpu()
        sampled, uniform = independent_draws(probs, generator) if given is None else inverse_cdf_draws(probs, given, t)
        sampled, uniform = sampled.to(dev), uniform.to(dev)
        sampled = torch.where(masked, sampled, state)
        token_logp = logp.gather(-1, sampled[..., None]).squeeze(-1)
        confidence = token_logp + noise[t] * -torch.log(-torch.log(uniform))  # + sigma_t * Gumbel
        confidence = confidence.masked_fill(~masked, float("inf"))
        reveal_now = masked.clone()
        if keep_masked:
            stay = confidence.topk(keep_masked, dim=1, largest=False).indices
            reveal_now.scatter_(1, stay, False)
        state = torch.where(reveal_now, sampled, state)
        reveal[reveal_now] = t
        cutoff[:, t] = confidence.masked_fill(~reveal_now, float("inf")).amin(dim=1)
        unit_lp, _ = transition_terms(logp, sampled, masked, reveal_now, cutoff[:, t], noise[t].expand(b), cfg.variant)
        terms.append(unit_lp.float().cpu())
        if needs_step_tokens(cfg.variant):
            drawn.append(sampled.cpu())
    step_tokens = torch.stack(drawn, dim=1) if drawn else torch.zeros(b, 0, n, dtype=torch.long)
    return Rollout(tokens=state.cpu(), reveal_step=reveal.cpu(), cutoff=cutoff.cpu(),
                   behaviour_terms=torch.stack(terms, dim=1), step_tokens=step_tokens)
