"""The GPU check (`make gpu-check`): one table of what full-size Show-o 512 and aMUSEd 256 do on one GPU.

A random-init Show-o 512 (Phi-1.5 sizes with q/k LayerNorm, 58,498 ids, 1,024 image tokens, the
release's MAGVIT-v2 decoder; `maskrl.models.random_showo`) in bf16, measured in this process
(and aMUSEd 256, `maskrl.models.random_amused`, for the sampler, learner and decoding rows):

- sampler: the batched recording sampler (`maskrl.sampling.sample`, `--batch` images a call)
  against a loop of batch-1 calls over the same prompts, images/s (target >= 8x);
- learner: (trajectory, step) pairs scored and back-propagated in one batch (`score_pairs`, the
  learner's forward) against one pair at a time, pairs/s (target >= 4x);
- MFU: a bare batched forward's FLOP/s against a measured bf16 matmul peak (target >= 40%);
- peak memory of each part, and of decoding the images to pixels;
- a 2-iteration `maskrl train` of the ShapesWorld recipe on local Ray, the one GPU shared
  fractionally by the rollout workers and the learner.

`--tiny` runs the same on CPU with a tiny Show-o (the test of this script). Prints one table.

    python bench/gpu_check.py            # on a GPU machine (about 3 to 5 min)
    python bench/gpu_check.py --tiny     # anywhere
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import time

import torch

from common import table
from maskrl.grpo import score_pairs
from maskrl.iteration import rollout_groups
from maskrl.models.magvit2 import MagvitV2Config
from maskrl.models.random_showo import random_showo
from maskrl.models.showo_release import ShowoReleaseConfig
from maskrl.sampling import SamplingConfig, sample

TINY_LLM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "partial_rotary_factor": 0.5, "max_position_embeddings": 160}
PROMPTS = ["a photo of a corgi wearing sunglasses", "two red apples on a wooden table", "a lighthouse at dusk",
           "an astronaut riding a horse, oil painting"]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


@contextlib.contextmanager
def peak_memory(device: str, out: dict, key: str):
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    yield
    out[key] = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")


def matmul_peak(device: str, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n @ n x n matmul in `dtype`."""
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)
    return 2 * size**3 / min(timed(lambda: torch.matmul(a, b), device) for _ in range(repeats))


def forward_flops(policy) -> float:
    """FLOPs of one forward of one sequence: the transformer's matmuls over L tokens, the codebook
    rows of the head over the N image tokens, and QK^T and AV over the full L x L."""
    c, length = policy.lm.config, policy.seq_len
    linear = sum(m.weight.numel() for m in policy.lm.model.modules() if isinstance(m, torch.nn.Linear))
    return 2 * linear * length + 2 * policy.layout.codebook_size * c.hidden_size * policy.num_image_tokens \
        + 4 * length**2 * c.hidden_size * c.num_hidden_layers


def build_showo(args):
    if args.tiny:
        layout = ShowoReleaseConfig(llm_vocab_size=257, num_vq_tokens=16)
        vq = MagvitV2Config(ch=8, num_res_blocks=(1, 1, 1, 1, 1), norm_groups=4)
        return random_showo(layout, TINY_LLM, 64, vq, "cpu", torch.float32)
    return random_showo(device="cuda", dtype=torch.bfloat16)


def amused_rows(args, device, dtype, mem) -> list:
    """aMUSEd 256 at full size (also with --tiny: 0.8 B parameters run on CPU at a 1-step, 1-image scale)."""
    from maskrl.models.random_amused import random_amused

    policy = random_amused(16, device, dtype)
    small = argparse.Namespace(**{**vars(args), **({"batch": 1, "steps": 1, "pairs": 1} if args.tiny else {})})
    sampler, sampling = sampler_rows(policy, small, device, mem, "aMUSEd 256 ")
    rows = sampler + learner_rows(policy, small, sampling, device, mem, "aMUSEd 256 ") + [decode_row(policy, small, device, mem, "aMUSEd 256 ")]
    rows.insert(0, ["aMUSEd 256 model", f"{policy.num_parameters / 1e9:.3f} B trained parameters (transformer), {dtype}",
                    f"{policy.num_image_tokens} image tokens"])
    return rows


def sampler_rows(policy, args, device, mem, name: str = "") -> tuple[list, object]:
    sampling = SamplingConfig(steps=args.steps, cfg_scale=args.cfg, noise_schedule="compound", micro_batch=args.batch)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    gen = torch.Generator().manual_seed(0)
    sample(policy, prompts[:1], sampling, gen)  # warm-up (kernels, allocator)
    with peak_memory(device, mem, name + "sampler"):
        batched = timed(lambda: sample(policy, prompts, sampling, gen), device)
    one = timed(lambda: [sample(policy, [p], sampling, gen) for p in prompts], device)
    rows = [[name + "sampler, batched", f"{args.batch / batched:.3f} images/s", f"{one / batched:.1f}x (target >= 8x)"],
            [name + "sampler, batch-1 loop", f"{args.batch / one:.3f} images/s", ""]]
    return rows, sampling


def learner_rows(policy, args, sampling, device, mem, name: str = "") -> list:
    groups = [(i, PROMPTS[i % len(PROMPTS)]) for i in range(max(1, args.pairs // (2 * 2)))]
    batch = rollout_groups(policy, groups, 2, sampling, torch.Generator().manual_seed(1), 0)
    traj = torch.arange(len(batch)).repeat_interleave(2)[: args.pairs]
    step = torch.randint(0, sampling.steps, (len(traj),), generator=torch.Generator().manual_seed(2))
    policy.train()

    def backward(t, s):
        terms, units = score_pairs(policy, batch, t, s, sampling)
        (terms * units).sum().backward()

    backward(traj[:1], step[:1])  # warm-up
    with peak_memory(device, mem, name + "learner"):
        together = timed(lambda: backward(traj, step), device)
    alone = timed(lambda: [backward(traj[i:i + 1], step[i:i + 1]) for i in range(len(traj))], device)
    policy.zero_grad(set_to_none=True)
    policy.eval()
    return [[name + "learner, batched pairs", f"{len(traj) / together:.3f} pairs/s", f"{alone / together:.1f}x (target >= 4x)"],
            [name + "learner, one pair at a time", f"{len(traj) / alone:.3f} pairs/s", ""]]


def mfu_row(policy, args, device, dtype) -> list:
    n = 2 * args.batch  # cond and uncond stacked, as the sampler runs them
    text = torch.cat([policy.encode_prompts([PROMPTS[0]] * args.batch), policy.null_prompts(args.batch)]).to(device)
    state = torch.full((n, policy.num_image_tokens), policy.mask_code, device=device)
    mask = policy.attention_mask(text)
    with torch.no_grad():
        policy(text, state, mask)
        seconds = min(timed(lambda: policy(text, state, mask), device) for _ in range(3))
    peak = matmul_peak(device, dtype, 8192 if device == "cuda" else 512)
    achieved = forward_flops(policy) * n / seconds
    return ["forward MFU", f"{achieved / 1e12:.2f} TFLOP/s of {peak / 1e12:.1f} peak ({dtype})",
            f"{100 * achieved / peak:.0f}% (target >= 40%)"]


def decode_row(policy, args, device, mem, name: str = "") -> list:
    tokens = torch.randint(0, policy.mask_code, (args.batch, policy.num_image_tokens))
    policy.decode_images(tokens[:1])
    with peak_memory(device, mem, name + "decode"):
        seconds = timed(lambda: policy.decode_images(tokens), device)
    return [name + "VQ decode", f"{args.batch / seconds:.2f} images/s", f"{policy.grid_shape[0] * 16} px"]


def train_row(device: str) -> list:
    """`maskrl train` (actors.driver.train) of make run's recipe, 2 iterations, one GPU shared by the pools."""
    from actors.driver import train
    from maskrl.cluster_config import LearnerConfig, PoolConfig
    from maskrl.train_config import load_train_config

    gpu = 0.25 if device == "cuda" else 0.0
    quick = [] if device == "cuda" else ["sampling.steps=2", "eval.sampling.steps=2", "grpo.group_size=2",
                                         "grpo.branch.steps=[0,1]"]  # --tiny: seconds (branch steps within 2)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_train_config("configs/shapes_cpu.yaml", [f"out={out}", "iterations=2", "eval.prompts=12", "eval.samples=1",
                                                             "grpo.prompts_per_iter=4", "grid_every=0", *quick])
        cluster = dataclasses.replace(
            cfg.cluster, rollout=PoolConfig(workers=2, cpus_per_worker=0.5, gpus_per_worker=gpu),
            learner=LearnerConfig(workers=1, cpus_per_worker=0.5, gpus_per_worker=gpu))  # one NCCL rank per GPU
        start = time.perf_counter()
        result = train(dataclasses.replace(cfg, cluster=cluster))
        seconds = time.perf_counter() - start
    return ["maskrl train, 2 iterations on Ray", f"{seconds:.0f} s", f"rollout 2 x {gpu} GPU, learner 1 x {gpu} GPU; "
            f"held-out {result.final.get('eval/overall', float('nan')):.2f}"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a tiny Show-o on CPU (the test of this script)")
    p.add_argument("--batch", type=int, default=16, help="images per batched sampler call")
    p.add_argument("--steps", type=int, default=16, help="unmasking steps (Show-o's demo uses 16 to 50)")
    p.add_argument("--cfg", type=float, default=5.0, help="Show-o's guidance scale")
    p.add_argument("--pairs", type=int, default=8, help="(trajectory, step) pairs in the learner's batch (x2 with CFG)")
    p.add_argument("--no-train", action="store_true", help="skip the Ray training run")
    p.add_argument("--no-amused", action="store_true", help="skip aMUSEd (full size even with --tiny: about a minute on CPU)")
    args = p.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        p.error("no GPU here: run with --tiny, or on a GPU machine")
    device, dtype = ("cpu", torch.float32) if args.tiny else ("cuda", torch.bfloat16)
    start = time.perf_counter()
    policy = build_showo(args)
    mem: dict[str, float] = {}
    rows = [["Show-o 512 model", f"{policy.num_parameters / 1e9:.3f} B parameters, {dtype}", f"{policy.seq_len} tokens a sequence, "
             f"{policy.num_image_tokens} image tokens"]]
    sampler, sampling = sampler_rows(policy, args, device, mem)
    rows += sampler + learner_rows(policy, args, sampling, device, mem)
    rows += [mfu_row(policy, args, device, dtype), decode_row(policy, args, device, mem)]
    del policy
    if device == "cuda":
        torch.cuda.empty_cache()
    if not args.no_amused:
        rows += amused_rows(args, device, dtype, mem)
    rows.append(["peak memory (GiB)", ", ".join(f"{k} {v:.1f}" for k, v in mem.items()), "torch.cuda.max_memory_allocated"])
    if not args.no_train:
        rows.append(train_row(device))
    table(["check", "figure", "note"], rows, title=f"maskrl GPU check ({'tiny, CPU' if args.tiny else torch.cuda.get_device_name()}, "
          f"batch {args.batch}, {args.steps} steps, CFG {args.cfg}; {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
