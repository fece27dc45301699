"""Model FLOP utilisation of the sampler against this machine's measured fp32 matmul peak.

Peak: ``torch.matmul`` of two square fp32 matrices (``--matmul-size``), best of
``--peak-repeats``, at the bench's thread count, measured in every round just before the
sampler so both see the same load on the shared cores. Sampler FLOPs are counted
analytically per forward of one sequence of L tokens::

    2 * (weights of the transformer's matmuls) * L      q, k, v, dense, fc1, fc2 of every layer
  + 2 * (codebook rows of the LM head) * N              only image positions, only codebook rows
  + 4 * L^2 * hidden * layers                           QK^T and AV (full L x L: SDPA with a mask)

times 2 with CFG (cond and uncond stacked), times batch and steps; embeddings, norms,
softmax, sampling and the transition log-probs are not counted (they are overhead).
MFU per round = achieved FLOP/s / that round's peak; the median over rounds is reported,
for the whole sampler and for one bare forward at the same batch.

    python bench/bench_core_mfu.py
"""
from __future__ import annotations


import torch
from torch import nn

from common import base_parser, median, prompts, sampling_config, setup, table, timed
from maskrl.sampling import sample


def matmul_peak(size: int, repeats: int) -> float:
    """Best fp32 GFLOP/s of an n x n @ n x n matmul."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = min(timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def forward_flops(policy) -> tuple[float, dict]:
    """FLOPs of one forward of one sequence, and the counts behind it."""
    c = policy.config
    mm_params = sum(m.weight.numel() for m in policy.lm.model.modules() if isinstance(m, nn.Linear))
    length, n = policy.seq_len, policy.num_image_tokens
    head = c.codebook_size * c.hidden_size
    parts = {
        "matmul weights": mm_params,
        "sequence L": length,
        "linear GFLOP": 2 * mm_params * length / 1e9,
        "head GFLOP": 2 * head * n / 1e9,
        "attention GFLOP": 4 * length**2 * c.hidden_size * c.num_layers / 1e9,
    }
    return 1e9 * (parts["linear GFLOP"] + parts["head GFLOP"] + parts["attention GFLOP"]), parts


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], batch=16, repeats=5)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--peak-repeats", type=int, default=5)
    args = p.parse_args(argv)
    policy = setup(args)
    sampling = sampling_config(args)
    texts = prompts(args.batch, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    cfg_factor = 2 if sampling.cfg_scale else 1
    per_seq, parts = forward_flops(policy)
    fwd_flops = per_seq * args.batch * cfg_factor
    sample_flops = fwd_flops * sampling.steps
    print(f"sampling: steps {sampling.steps}, cfg {sampling.cfg_scale} (x{cfg_factor}), batch {args.batch}; "
          f"{args.repeats} rounds; matmul {args.matmul_size}^2 best of {args.peak_repeats}")
    print("per forward of one sequence: " + ", ".join(f"{k} {v:,.4g}" for k, v in parts.items())
          + f" -> {per_seq / 1e9:.4f} GFLOP")
    print(f"per sample() call: {sample_flops / 1e9:.2f} GFLOP")

    text_ids = policy.encode_prompts(texts)
    state = torch.full((args.batch, policy.num_image_tokens), policy.mask_code, dtype=torch.long)
    if cfg_factor == 2:
        text_ids = torch.cat([text_ids, policy.null_prompts(args.batch)])
        state = torch.cat([state, state])
    attn = policy.attention_mask(text_ids)

    def forward():
        with torch.no_grad():
            policy(text_ids, state, attn)

    sample(policy, texts, sampling, gen)  # warm-up
    forward()
    rows, mfu_s, mfu_f, peaks, ach_s, ach_f = [], [], [], [], [], []
    for r in range(args.repeats):
        peak = matmul_peak(args.matmul_size, args.peak_repeats)
        t_s = timed(lambda: sample(policy, texts, sampling, gen))
        t_f = timed(forward)
        g_s, g_f = sample_flops / t_s / 1e9, fwd_flops / t_f / 1e9
        peaks.append(peak), ach_s.append(g_s), ach_f.append(g_f)
        mfu_s.append(g_s / peak), mfu_f.append(g_f / peak)
        rows.append([str(r), peak, t_s, g_s, f"{100 * g_s / peak:.1f}%", t_f, g_f, f"{100 * g_f / peak:.1f}%"])
    table(["round", "peak GFLOP/s", "sample s", "sample GFLOP/s", "sample MFU", "forward s", "forward GFLOP/s", "forward MFU"],
          rows, title="per round (peak measured just before)")
    print(f"\nmatmul peak: median {median(peaks):.1f}, best {max(peaks):.1f} GFLOP/s "
          f"({torch.get_num_threads()} thread(s), fp32, {args.matmul_size}^2)")
    print(f"sampler: median {median(ach_s):.1f} GFLOP/s = {args.batch * median(ach_s) / (sample_flops / 1e9):.2f} images/s; "
          f"bare forward: median {median(ach_f):.1f} GFLOP/s")
    print(f"MFU (sampler, median of rounds): {100 * median(mfu_s):.1f}%  "
          f"(bare forward {100 * median(mfu_f):.1f}%; sampler vs best peak {100 * median(ach_s) / max(peaks):.1f}%)")


if __name__ == "__main__":
    main()
