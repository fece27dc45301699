"""Chaos run: `make run`'s Mask-GRPO run on a simulated 4-node Ray cluster with faults injected
mid-run, against the same run undisturbed, in one process; prints what each fault cost.

Nodes (`ray.cluster_utils.Cluster`): the head (the driver, the reward worker) and three workers
with 2 CPUs each; rollout workers SPREAD over the workers, the learner ranks PACKed on one.
Faults (`tests.faults.FaultInjector`, each while an iteration's rollouts are in flight):
rollout worker killed, reward worker killed, learner rank killed, the learner's node lost
(SIGKILL of its raylet and processes; a new node joins as an autoscaler would add one) and the
newest checkpoint truncated just before a learner rank is killed (the recovery must skip it).

Reported, from the runs' metrics.jsonl and events.jsonl: per fault kind the times injected and
the recoveries logged; iterations missing or repeated in the metrics log; prompt groups lost;
iterations redone; the rewards and held-out ShapesEval of both runs and the wall-clock ratio.

    python bench/bench_ray_chaos.py [--iterations 8] [--schedule 2:rollout,3:reward,...]
"""
from __future__ import annotations

import collections
import tempfile
import time

from common import base_parser, saved, setup, table
from maskrl.config import load_config
from maskrl.train_config import TrainConfig

DEFAULT_SCHEDULE = "2:rollout,3:reward,4:learner,5:node,6:rollout,7:truncate,7:learner"


def config(checkpoint: str, args, name: str) -> TrainConfig:
    out = tempfile.mkdtemp(prefix=f"maskrl-chaos-{name}-")
    return load_config(TrainConfig, "configs/shapes_cpu.yaml", [
        f"checkpoint={checkpoint}", f"out={out}", f"iterations={args.iterations}", "checkpoint_every=1",
        "grid_every=0", f"eval.prompts={args.eval_prompts}",
        "cluster.rollout.resources={maskrl_node: 1}", "cluster.rollout.strategy=SPREAD",
        "cluster.learner.resources={maskrl_node: 1}", "cluster.learner.strategy=PACK",
        "cluster.reward.resources={maskrl_reward_node: 1}", "cluster.placement_timeout_s=120",
    ])


def audit(run, planned_groups: int, iterations: int) -> dict:
    from actors.runstate import read_events
    from maskrl.metrics import read_metrics

    rows = [m for m in read_metrics(run) if m["iteration"] > 0]
    seen = collections.Counter(m["iteration"] for m in rows)
    events = read_events(run)
    return {
        "rows": rows,
        "missing": [i for i in range(1, iterations + 1) if not seen[i]],
        "repeated": [i for i, n in seen.items() if n > 1],
        "groups_lost": sum(planned_groups - m["batch/groups"] for m in rows),
        "events": collections.Counter(e["kind"] for e in events),
        "redone": sum(e["iteration"] - e["resume_from"] for e in events if e["kind"] == "learner_lost"),
    }


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], batch=0, repeats=1)
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--eval-prompts", type=int, default=24)
    p.add_argument("--schedule", default=DEFAULT_SCHEDULE, help="ITERATION:KIND,... with KIND in " + "|".join(
        ("rollout", "reward", "learner", "node", "truncate")))
    args = p.parse_args(argv)
    policy = setup(args)
    from tests.faults import FaultInjector, simulated_cluster
    from actors.driver import train

    checkpoint = saved(policy)  # the base model (or --tiny / random) as a directory the actors load
    schedule = [(int(a), k) for a, k in (item.split(":") for item in args.schedule.split(","))]
    cluster, _ = simulated_cluster({"num_cpus": 1, "resources": {"maskrl_reward_node": 100}},
                                   [{"num_cpus": 2, "resources": {"maskrl_node": 100}}] * 3, store_bytes=300 * 2**20)
    try:
        results, walls = {}, {}
        for name in ("undisturbed", "chaos"):
            cfg = config(checkpoint, args, name)
            faults = FaultInjector(schedule, cluster) if name == "chaos" else None
            start = time.perf_counter()
            result = train(cfg, after_dispatch=faults)
            walls[name] = time.perf_counter() - start
            results[name] = (result, audit(result.run, cfg.grpo.prompts_per_iter, cfg.iterations))
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()

    (base, clean), (chaos, hit) = results["undisturbed"], results["chaos"]
    injected = collections.Counter(f["kind"] for f in faults.injected)
    recovered_by = {"rollout": "rollout_worker_replaced", "reward": "reward_worker_replaced",
                    "learner": "learner_lost", "node": "learner_lost", "truncate": "checkpoint_rejected"}
    rows = [[kind, str(injected[kind]), recovered_by[kind]] for kind in ("rollout", "reward", "learner", "node", "truncate")]
    table(["fault", "injected", "recovered by"], rows, title=f"faults injected (schedule {args.schedule})")
    logged = ", ".join(f"{k} {n}" for k, n in sorted(hit["events"].items()))
    print(f"events the run logged: {logged}")
    mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
    table(["", "undisturbed", "with faults"], [
        ["iterations missing from the metrics log", str(clean["missing"]), str(hit["missing"])],
        ["iterations repeated in the metrics log", str(clean["repeated"]), str(hit["repeated"])],
        ["prompt groups lost", str(clean["groups_lost"]), str(hit["groups_lost"])],
        ["iterations redone after a recovery", str(clean["redone"]), str(hit["redone"])],
        ["mean reward, last 3 iterations", f"{mean(clean['rows'][-3:], 'reward/mean'):.4f}", f"{mean(hit['rows'][-3:], 'reward/mean'):.4f}"],
        ["held-out ShapesEval after", f"{base.final.get('eval/overall', float('nan')):.3f}", f"{chaos.final.get('eval/overall', float('nan')):.3f}"],
        ["wall-clock s (ratio)", f"{walls['undisturbed']:.0f}", f"{walls['chaos']:.0f} ({walls['chaos'] / walls['undisturbed']:.2f}x)"],
    ], title=f"{args.iterations} iterations, make run's config, checkpoint every iteration")
    same = [r["reward/mean"] for r in clean["rows"]] == [r["reward/mean"] for r in hit["rows"]]
    print(f"per-iteration rewards identical to the undisturbed run: {same}")


if __name__ == "__main__":
    main()
