"""The files for running on a real cluster (cluster/*, configs/showo_paper.yaml) agree with the code:
they parse, the recipe loads and carries the paper's hyper-parameters, the node types (launcher)
and worker groups (KubeRay) can hold the recipe's pools, the runtime env is one Ray accepts, and
the Grafana panels only query metrics the driver actually logs. No Ray cluster is started."""
from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from actors.driver import validate
from actors.metrics import gauge_name
from actors.pools import PoolSpec, check_capacity, pool_layout
from maskrl.config import load_config
from maskrl.train_config import TrainConfig
from tests.fake_showo import fake_showo_release
from tests.helpers import REPO

CLUSTER = REPO / "cluster"
RECIPE = REPO / "configs" / "showo_paper.yaml"
# Ray's Prometheus exporter prefixes application metrics (ray.util.metrics) with this.
PROMETHEUS_PREFIX = "ray_"
CUSTOM = {"rollout": "maskrl_rollout_node", "reward": "maskrl_reward_node", "learner": "maskrl_learner_node"}


def _yaml(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.fixture(scope="module")
def recipe() -> TrainConfig:
    return load_config(TrainConfig, RECIPE)


# -- configs/showo_paper.yaml ---------------------------------------------------------------------
def test_recipe_has_the_paper_hyperparameters(recipe):
    g = recipe.grpo
    assert g.group_size == 6
    assert g.lr == pytest.approx(3e-6)
    assert tuple(g.betas) == (0.9, 0.95)
    assert g.weight_decay == pytest.approx(0.02)
    assert g.kl_coef == 0
    assert recipe.track_kl is False
    assert recipe.sampling.steps == 50 and recipe.eval.prompts == 0  # ShapesEval is for ShapesWorld only
    assert recipe.sampling.variant == "candidate2"
    c = recipe.cluster
    assert (c.mode, c.weight_transport, c.learner.backend, c.learner.zero_stage) == ("async", "collective", "nccl", 3)
    m = recipe.model
    assert (m.family, m.model_dir, m.resolution, m.dtype) == ("showo", "/models/show-o-512x512", 512, "bfloat16")
    assert recipe.out.startswith("/mnt/shared/")


def test_recipe_pools_are_pinned_to_their_node_types(recipe):
    c = recipe.cluster
    for name, pool in (("rollout", c.rollout), ("reward", c.reward), ("learner", c.learner)):
        assert dict(pool.resources) == {CUSTOM[name]: 1}, name
    assert c.rollout.gpus_per_worker == 1 and c.reward.gpus_per_worker == 1 and c.learner.gpus_per_worker == 1


def test_recipe_validation_fails_only_on_the_missing_release(recipe, tmp_path):
    recipe.out = str(tmp_path / "run")  # its shared-storage path needs not exist (nor be writable) here
    if Path(recipe.model.model_dir, "config.json").is_file():
        validate(recipe)  # the weights are there: everything else must be valid too
        return
    with pytest.raises(FileNotFoundError, match=r"model.model_dir.*/models/show-o-512x512"):
        validate(recipe)
    # with release directories and a prompt file that exist, the rest of the recipe is valid
    release, prompts = fake_showo_release(tmp_path), tmp_path / "prompts.txt"
    prompts.write_text("a corgi\n")
    recipe.model.model_dir, recipe.model.vq_dir = str(release["model"]), str(release["vq"])
    recipe.model.tokenizer_dir, recipe.prompts_file = str(release["tokenizer"]), str(prompts)
    validate(recipe)


def test_amused_recipe_keeps_the_cluster_and_samples_as_the_pipeline(tmp_path):
    from maskrl.models.amused import pipeline_noise_scale

    recipe = load_config(TrainConfig, REPO / "configs" / "amused_256.yaml")
    assert (recipe.model.family, recipe.model.model_dir, recipe.lora.rank) == ("amused", "/models/amused-256", 16)
    s = recipe.sampling
    assert (s.steps, s.cfg_scale, s.noise_schedule) == (12, 10.0, "linear") and s.noise_scale == pytest.approx(pipeline_noise_scale(12))
    assert recipe.grpo.group_size == 6 and recipe.cluster.learner.zero_stage == 3
    recipe.out = str(tmp_path / "run")
    if not Path(recipe.model.model_dir).is_dir():
        with pytest.raises(FileNotFoundError, match=r"model.model_dir.*/models/amused-256"):
            validate(recipe)


# -- pools vs the cluster's nodes -------------------------------------------------------------------
def _place(specs: list[PoolSpec], nodes: list[dict[str, float]]) -> None:
    """Greedy placement of every pool's bundles on `nodes` (consumed), honouring STRICT_* strategies."""
    free = [dict(n) for n in nodes]

    def room(node: dict[str, float], bundle: dict[str, float]) -> int:
        return min(int(node.get(r, 0.0) // v + 1e-9) for r, v in bundle.items())

    for s in specs:
        bundle, left = s.bundle, s.count
        fits = sorted(((room(n, bundle), i) for i, n in enumerate(free)), reverse=True)
        if s.strategy == "STRICT_PACK":
            assert fits and fits[0][0] >= s.count, f"pool '{s.name}': no single node holds {s.count} x {bundle}"
            take = [(fits[0][1], s.count)]
        elif s.strategy == "STRICT_SPREAD":
            hosts = [i for k, i in fits if k >= 1]
            assert len(hosts) >= s.count, f"pool '{s.name}': {s.count} x {bundle} on distinct nodes, only {len(hosts)} fit"
            take = [(i, 1) for i in hosts[: s.count]]
        else:
            take = []
            for k, i in fits:
                if left and k:
                    take.append((i, min(k, left)))
                    left -= min(k, left)
            assert left == 0, f"pool '{s.name}': {s.count} x {bundle} do not fit the nodes"
        for i, n in take:
            for r, v in bundle.items():
                free[i][r] -= n * v


def _check_pools_fit(cfg: TrainConfig, nodes: list[dict[str, float]]) -> None:
    specs, _ = pool_layout(cfg.cluster)
    total: dict[str, float] = {}
    for n in nodes:
        for r, v in n.items():
            total[r] = total.get(r, 0.0) + v
    largest = {r: max(n.get(r, 0.0) for n in nodes) for r in total}
    check_capacity(specs, total, largest)  # the driver's own check, with the whole cluster's resources
    _place(specs, nodes)  # and bundle by bundle, node by node


def _launcher_nodes(which: str) -> list[dict[str, float]]:
    cfg = _yaml("launcher.yaml")
    types = cfg["available_node_types"]
    nodes = [dict(types[cfg["head_node_type"]]["resources"])]
    for name, t in types.items():
        if name != cfg["head_node_type"]:
            nodes += [dict(t["resources"])] * t.get(which, 0)
    return nodes


def test_launcher_matches_the_schema_ray_ships():
    jsonschema = pytest.importorskip("jsonschema")
    import ray

    schema_file = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    if not schema_file.is_file():
        pytest.skip("this ray has no autoscaler/ray-schema.json")
    jsonschema.validate(_yaml("launcher.yaml"), json.loads(schema_file.read_text()))


def test_launcher_structure():
    cfg = _yaml("launcher.yaml")
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    for pool, custom in CUSTOM.items():
        t = types[f"{pool}_gpu"]
        assert {"CPU", "GPU", custom} <= set(t["resources"]), pool
        assert t["resources"]["GPU"] >= 1 and t["min_workers"] <= t["max_workers"]
    workers = sum(t.get("max_workers", 0) for n, t in types.items() if n != cfg["head_node_type"])
    assert cfg["max_workers"] >= workers
    head = " ".join(cfg["head_start_ray_commands"])
    for flag in ("--head", "--port=6379", "--dashboard-host=127.0.0.1", "--metrics-export-port=8080",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml"):
        assert flag in head, flag
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in " ".join(cfg["worker_start_ray_commands"])
    assert "$RAY_HEAD_IP:6379" in " ".join(cfg["worker_start_ray_commands"])
    assert any("pip install" in c and "maskrl" in c for c in cfg["setup_commands"])
    assert "~/.ray/auth_token" in cfg.get("file_mounts", {})


@pytest.mark.parametrize("which", ["min_workers", "max_workers"])
def test_launcher_node_types_hold_the_recipe_pools(recipe, which):
    # min_workers too: the nodes are all up before the job, so no pool waits on the autoscaler
    _check_pools_fit(recipe, _launcher_nodes(which))


def _rayjob_nodes(which: str) -> list[dict[str, float]]:
    spec = _yaml("rayjob.yaml")["spec"]["rayClusterSpec"]
    nodes = []
    groups = [(spec["headGroupSpec"], 1)] + [(g, g[which]) for g in spec["workerGroupSpecs"]]
    for group, count in groups:
        params = group["rayStartParams"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        res = {"CPU": float(params.get("num-cpus", limits["cpu"])), "GPU": float(limits.get("nvidia.com/gpu", 0))}
        if "resources" in params:
            # KubeRay passes it to `ray start --resources=...` inside a shell: a quoted JSON string
            res |= {k: float(v) for k, v in json.loads(shlex.split(params["resources"])[0]).items()}
        nodes += [res] * count
    return nodes


def test_rayjob_structure():
    job = _yaml("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    for key in ("entrypoint", "runtimeEnvYAML", "rayClusterSpec", "submissionMode", "shutdownAfterJobFinishes",
                "ttlSecondsAfterFinished", "backoffLimit"):
        assert key in spec, key
    rc = spec["rayClusterSpec"]
    assert rc["authOptions"]["mode"] == "token" and rc["authOptions"]["secretName"]
    assert {g["groupName"] for g in rc["workerGroupSpecs"]} == set(CUSTOM)
    for g in rc["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        custom = json.loads(shlex.split(g["rayStartParams"]["resources"])[0])
        assert custom == {CUSTOM[g["groupName"]]: 1000}, g["groupName"]
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1


def test_rayjob_entrypoint_names_a_config_in_the_repo():
    argv = shlex.split(_yaml("rayjob.yaml")["spec"]["entrypoint"])
    assert argv[:2] == ["maskrl", "train"]
    config = argv[argv.index("--config") + 1]
    assert (REPO / config).is_file(), config
    load_config(TrainConfig, REPO / config)


def test_rayjob_retries_a_lost_driver_or_head_into_the_same_run():
    """A retried job runs the same entrypoint on a new cluster: it must not start over (--fresh),
    and the run's `out` must be on the shared volume the new head mounts, so the retry continues."""
    job = _yaml("rayjob.yaml")
    assert job["spec"]["backoffLimit"] >= 1
    argv = shlex.split(job["spec"]["entrypoint"])
    assert "--fresh" not in argv
    out = load_config(TrainConfig, REPO / argv[argv.index("--config") + 1]).out
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    shared = {v["name"] for v in head["volumes"] if "persistentVolumeClaim" in v}
    mounts = [m["mountPath"] for m in head["containers"][0]["volumeMounts"] if m["name"] in shared and not m.get("readOnly")]
    assert any(Path(out).is_relative_to(m) for m in mounts), (out, mounts)


@pytest.mark.parametrize("which", ["minReplicas", "maxReplicas"])
def test_rayjob_worker_groups_hold_the_recipe_pools(recipe, which):
    _check_pools_fit(recipe, _rayjob_nodes(which))


def test_custom_resources_fit_their_declarations(recipe):
    # bundle count x ask <= declared per node x nodes, for each pool's custom resource
    c = recipe.cluster
    asks = {"rollout": (c.rollout.workers, c.rollout.resources), "reward": (c.reward.workers, c.reward.resources),
            "learner": (c.learner.workers, c.learner.resources)}
    for nodes in (_launcher_nodes("max_workers"), _rayjob_nodes("maxReplicas")):
        for pool, (count, resources) in asks.items():
            for name, ask in resources.items():
                assert count * ask <= sum(n.get(name, 0.0) for n in nodes), (pool, name)


# -- runtime env ------------------------------------------------------------------------------------
def test_runtime_env_is_accepted_by_ray(monkeypatch):
    from ray.runtime_env import RuntimeEnv

    env = _yaml("runtime_env.yaml")
    assert set(env) <= set(RuntimeEnv.known_fields)  # RuntimeEnv takes unknown keys as plugins
    monkeypatch.chdir(REPO)  # working_dir "." is the checkout `ray job submit` runs from
    RuntimeEnv(**env)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM"):
        assert var in env["env_vars"]
    assert {"runs/", ".venv/", ".git/"} <= set(env["excludes"])


def test_rayjob_runtime_env_matches_the_runtime_env_file(monkeypatch):
    from ray.runtime_env import RuntimeEnv

    inline = yaml.safe_load(_yaml("rayjob.yaml")["spec"]["runtimeEnvYAML"])
    env = _yaml("runtime_env.yaml")
    # the same except working_dir: KubeRay's submitter ships the repository copy in its image
    assert {k: v for k, v in inline.items() if k != "working_dir"} == {k: v for k, v in env.items() if k != "working_dir"}
    assert inline["working_dir"].startswith("/")
    assert set(inline) <= set(RuntimeEnv.known_fields)
    monkeypatch.chdir(REPO)
    RuntimeEnv(**(inline | {"working_dir": "."}))  # the image path only exists in the image


# -- Grafana dashboard vs the metrics the code logs -------------------------------------------------
METRIC_KEY = re.compile(r"^[a-z_]+/[a-z0-9_]+$")


def logged_metric_keys() -> set[str]:
    """Every metric key the code logs, read from the source: dict-literal keys and `m["a/b"] = ...`
    assignments in actors/ and maskrl/, the `iteration` the Ray sink adds, and the `eval/<key>`
    metrics of a held-out evaluation (`maskrl.evaluation.flat_metrics`, which both trainers log)."""
    keys: set[str] = set()
    for path in [*(REPO / "actors").glob("*.py"), *(REPO / "maskrl").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        skip = set()
        for node in ast.walk(tree):  # the description table names metrics, it does not log them
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "DESCRIPTIONS" for t in node.targets):
                skip.add(id(node.value))
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict) and id(node) not in skip:
                keys |= {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
                         and METRIC_KEY.match(k.value)}
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    if (isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant)
                            and isinstance(t.slice.value, str) and METRIC_KEY.match(t.slice.value)):
                        keys.add(t.slice.value)
            elif isinstance(node, ast.FunctionDef) and node.name == "__call__" and path.name == "metrics.py":
                for sub in ast.walk(node):  # RayMetricsSink.__call__ adds the iteration number
                    if isinstance(sub, ast.Dict):
                        keys |= {k.value for k in sub.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    from maskrl.evaluation import flat_metrics, summarise
    from maskrl.world import CATEGORIES, PromptSampler
    import numpy as np

    prompts = [PromptSampler({c: 1.0}).sample(np.random.default_rng(0)) for c in CATEGORIES]
    return keys | set(flat_metrics(summarise(prompts, 1, [False] * len(prompts))))


def _dashboard_exprs(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def test_grafana_dashboard_queries_only_logged_metrics():
    dash = json.loads((CLUSTER / "grafana_dashboard.json").read_text())
    logged = logged_metric_keys()
    for key in ("iteration", "reward/mean", "reward/std", "eval/overall", "rollout/images_per_s", "time/learner_update",
                "time/weight_sync", "version/lag_max", "groups/filtered", "restarts/rollout", "restarts/reward"):
        assert key in logged, f"the code no longer logs {key}"  # guards the source scan itself
    exported = {PROMETHEUS_PREFIX + gauge_name(k): k for k in logged}
    used = set()
    for expr in _dashboard_exprs(dash):
        names = set(re.findall(r"\b(" + re.escape(PROMETHEUS_PREFIX) + r"maskrl_[A-Za-z0-9_]+)", expr))
        assert names, f"query names no maskrl metric: {expr}"
        unknown = names - set(exported)
        assert not unknown, f"{sorted(unknown)} in {expr!r}: not logged by the code (logged: {sorted(exported)})"
        used |= {exported[n] for n in names}
    wanted = {"iteration", "reward/mean", "reward/std", "eval/overall", "rollout/images_per_s", "time/learner_update",
              "time/weight_sync", "version/lag_max", "groups/filtered", "restarts/rollout", "restarts/reward",
              "restarts/learner"}
    assert wanted <= used, f"no panel for {sorted(wanted - used)}"


def test_grafana_dashboard_shape():
    dash = json.loads((CLUSTER / "grafana_dashboard.json").read_text())
    assert dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    run_query = variables["run"]["query"]
    run_query = run_query["query"] if isinstance(run_query, dict) else run_query
    assert run_query == f"label_values({PROMETHEUS_PREFIX}maskrl_iteration, run)"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            assert '$run' in t["expr"]
