"""The learner group: N ranks, each a Ray actor running DeepSpeed (ZeRO stage 0-3) on the
policy, torch.distributed initialised inside the actors (NCCL on GPU, gloo on CPU with
DS_ACCELERATOR=cpu), and the optimiser a client torch AdamW or SGD (`maskrl.grpo.optim.make_optimizer`, `grpo.optimizer`).

One update = `maskrl.iteration.prepare` + `maskrl.grpo.grpo_update` on the trajectory record
batches read zero-copy from the object store; every rank prepares the same batch and takes
its slice of each minibatch, and DeepSpeed averages the gradients, so the update equals the
single-process one. Rank 0 publishes the full weights (gathered under ZeRO-3).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time
import warnings
from pathlib import Path

import ray
import torch

from actors import collective, weights
from maskrl.checkpoints import digest_tree
from maskrl.evaluation import load_checkpoint
from maskrl.grpo import grpo_update
from maskrl.grpo.optim import make_optimizer
from maskrl.iteration import check_groups, prepare
from maskrl.seeds import update_seed
from maskrl.models import save_policy
from maskrl.models.lora import for_training, trainable_state
from maskrl.train_config import TrainConfig
from maskrl.trajectory import TrajectoryBatch


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    lc = cfg.cluster.learner
    ds = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": cfg.grpo.grad_clip,
        "zero_optimization": {"stage": int(lc.zero_stage)},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bool(lc.bf16)},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return _merge(ds, dict(lc.deepspeed))


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class LearnerRank:
    def __init__(self, rank: int, world_size: int, cfg: TrainConfig, threads: int, use_gpu: bool):
        if not use_gpu:
            os.environ["DS_ACCELERATOR"] = "cpu"  # before deepspeed is imported in this process
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(threads)
        # DeepSpeed's ZeRO collectives call torch's all_gather_into_tensor, which torch 2.x deprecates
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
        self.rank, self.world_size, self.cfg, self.use_gpu = rank, world_size, cfg, use_gpu
        self.version = 0

    def address(self) -> tuple[str, str]:
        return collective.node_address()

    def ready(self) -> int:
        return self.version

    def free_port(self, host: str) -> int:
        with socket.socket() as s:
            s.bind((host, 0))
            return s.getsockname()[1]

    def setup(self, master_addr: str, master_port: int, policy_dir: str, version: int, optimizer_dir: str | None) -> dict[str, int]:
        """Join the process group, build the DeepSpeed engine; resume optimiser/schedule when given."""
        import logging

        import deepspeed
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
        if not self.use_gpu:
            # DeepSpeed JIT-compiles a shared-memory all-reduce used only for *inference* on CPU
            # (a minute of C++ build on a fresh machine); training never calls it.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        backend = self.cfg.cluster.learner.backend
        backend = ("nccl" if self.use_gpu else "gloo") if backend == "auto" else backend
        if master_addr == "127.0.0.1" and "lo" in {name for _, name in socket.if_nameindex()}:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one node: stay on loopback
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        # a collective whose peer died fails after this long; the driver does not wait for that
        # (it rebuilds the group as soon as it sees a dead rank)
        timeout = datetime.timedelta(seconds=self.cfg.cluster.learner.collective_timeout_s)
        deepspeed.init_distributed(dist_backend=backend, rank=self.rank, world_size=self.world_size, verbose=False, timeout=timeout)
        device = torch.device("cuda", 0) if self.use_gpu else torch.device("cpu")
        policy = for_training(load_checkpoint(policy_dir), self.cfg.lora, policy_dir).to(device)
        if self.cfg.cluster.learner.gradient_checkpointing:
            policy.enable_gradient_checkpointing()
        g = self.cfg.grpo
        self.reference = None
        if g.kl_coef or self.cfg.track_kl:
            self.reference = load_checkpoint(self.cfg.checkpoint).to(device).requires_grad_(False)
        optim, self.sched = make_optimizer(policy, self.cfg.grpo, self.cfg.iterations)
        if self.cfg.cluster.learner.zero_stage == 3:
            # the Show-o policies read lm_head's codebook rows themselves (never call lm_head): ZeRO-3 must gather them
            for p in policy.lm.lm_head.parameters():
                deepspeed.zero.register_external_parameter(policy, p)
        self.engine, *_ = deepspeed.initialize(model=policy, optimizer=optim, config=deepspeed_config(self.cfg, self.world_size))
        self.module = self.engine.module
        self.version = version
        if optimizer_dir is not None:
            self._load_optimizer(Path(optimizer_dir))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(version):  # the schedule steps once per iteration, as in train_local
                self.sched.step()
        params = list(self.module.parameters())
        return {
            "params": sum(getattr(p, "ds_numel", p.numel()) for p in params),
            "local_params": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params),
        }

    def _step(self, loss: torch.Tensor) -> float:
        self.engine.backward(loss)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def update(self, iteration: int, batch_refs: list, planned: list[int]) -> dict[str, float]:
        """One Mask-GRPO update on the iteration's scored record batches (refs, in plan order)."""
        start = time.perf_counter()
        records = ray.get(batch_refs)
        batch = TrajectoryBatch.concat([TrajectoryBatch.from_arrow(r) for r in records])
        exchange = time.perf_counter() - start
        check_groups(batch, planned, self.cfg.grpo.group_size)
        prepared = prepare(batch, self.cfg.grpo)
        lag = (self.version - batch.policy_version).float()
        metrics = {
            **prepared.metrics,
            "version/learner": float(self.version),
            "version/lag_max": float(lag.max()),
            "version/lag_min": float(lag.min()),
            "version/lag_mean": float(lag.mean()),
            "batch/trajectories": float(len(batch)),
            "batch/groups": float(len(planned)),
            "time/exchange": exchange,
            "lr": self.sched.get_last_lr()[0],
        }
        if len(prepared.batch):
            gen = torch.Generator().manual_seed(update_seed(self.cfg.seed, iteration))
            result = grpo_update(
                self.module, self.reference, prepared.batch, self.cfg.grpo, self.cfg.sampling, self._step, gen,
                rank=self.rank, world_size=self.world_size,
            )
            metrics.update({f"loss/{k}": v for k, v in self._rank_mean(result).items()})
        with warnings.catch_warnings():  # no optimiser step when every group was filtered: expected
            warnings.simplefilter("ignore", UserWarning)
            self.sched.step()
        self.version += 1
        metrics["time/learner_update"] = time.perf_counter() - start
        return metrics

    def _rank_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each rank's diagnostics cover its slice of every minibatch: average them over the ranks."""
        import torch.distributed as dist

        keys = sorted(values)
        vec = torch.tensor([values[k] for k in keys], dtype=torch.float64, device="cuda" if self.use_gpu else "cpu")
        dist.all_reduce(vec)
        return dict(zip(keys, (vec / self.world_size).tolist()))

    @contextlib.contextmanager
    def _full_weights(self):
        """Every rank must enter (a collective under ZeRO-3); inside, `self.module` holds full weights."""
        if self.cfg.cluster.learner.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
                yield
        else:
            yield

    def publish(self, version: int, transport: str, group: str | None = None, bucket_bytes: int = 0):
        """Full weights of `version`: numpy arrays (rank 0's return value, stored once in the object
        store), or broadcast over the collective `group` (rank 0 is its source). Called on all ranks."""
        if version != self.version:
            raise RuntimeError(f"asked to publish version {version}, the learner holds {self.version}")
        with self._full_weights():
            if self.rank != 0:
                return None
            state = trainable_state(self.module)
            if transport == "object_store":
                return weights.to_numpy(state)
            return weights.broadcast_send(state, version, group, bucket_bytes)

    def join_group(self, world_size: int, rank: int, name: str, store_host: str, bind_host: str, backend: str) -> None:
        collective.join(world_size, rank, name, store_host, bind_host, backend)

    def leave_group(self, name: str) -> None:
        collective.leave(name)

    def save(self, directory: str, extra: dict) -> dict[str, dict]:
        """Policy (safetensors, save_policy layout) from rank 0 and each rank's optimiser shard;
        returns the digests of the files this rank wrote (hashed here, where they were written)."""
        out = Path(directory)
        with self._full_weights():
            if self.rank == 0:
                save_policy(self.module, out, extra={**extra, "version": self.version})
        shard = self._save_optimizer(out / "optimizer")
        mine = [str(shard.relative_to(out))]
        if self.rank == 0:  # the policy files: everything at the top level (the shards are below optimizer/)
            mine += [p.name for p in sorted(out.iterdir()) if p.is_file()]
        return digest_tree(out, mine)

    # -- optimiser state: safetensors per rank (ZeRO shards need the same ranks and stage to resume)
    @contextlib.contextmanager
    def _inner_optimizer(self):
        """The torch AdamW that steps this rank's (flat, partitioned) fp32 parameters. ZeRO-3 attaches
        those to its param groups only around a step, so attach them meanwhile, as DeepSpeed's own
        state_dict does."""
        opt = self.engine.optimizer
        inner = getattr(opt, "optimizer", opt)
        attach = getattr(opt, "_set_fp32_optimizer_param_groups", None)
        if attach is None:
            yield inner
            return
        attach()
        try:
            yield inner
        finally:
            opt._clear_fp32_optimizer_param_groups()

    def _save_optimizer(self, directory: Path) -> Path:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        with self._inner_optimizer() as opt:
            for gi, group in enumerate(opt.param_groups):
                for pi, p in enumerate(group["params"]):
                    for key, value in opt.state.get(p, {}).items():
                        tensors[f"{gi}.{pi}.{key}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
        meta = {"ranks": str(self.world_size), "zero_stage": str(self.cfg.cluster.learner.zero_stage)}
        path = directory / f"rank{self.rank:03d}.safetensors"
        save_file(tensors, path, metadata=meta)
        return path

    def _load_optimizer(self, directory: Path) -> None:
        from safetensors import safe_open

        path = directory / f"rank{self.rank:03d}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"optimizer shard {str(path)!r} is missing")
        with safe_open(path, "pt") as f, self._inner_optimizer() as opt:
            meta = f.metadata() or {}
            want = {"ranks": str(self.world_size), "zero_stage": str(self.cfg.cluster.learner.zero_stage)}
            if {k: meta.get(k) for k in want} != want:
                raise ValueError(f"optimizer state in {str(directory)!r} was saved with {meta}; this run has {want}")
            loaded = 0
            for gi, group in enumerate(opt.param_groups):
                for pi, p in enumerate(group["params"]):
                    keys = [k for k in f.keys() if k.startswith(f"{gi}.{pi}.")]
                    if keys:
                        opt.state[p] = {k.split(".", 2)[2]: f.get_tensor(k).to(p.device) for k in keys}
                        loaded += len(keys)
            if loaded != len(f.keys()):
                raise ValueError(f"optimizer state in {str(path)!r} does not fit this optimizer ({loaded} of {len(f.keys())} tensors used)")


LearnerActor = ray.remote(LearnerRank)  # the class itself stays importable, so Ray pickles it by reference
