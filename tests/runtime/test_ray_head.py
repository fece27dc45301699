"""A real `ray start --head` on loopback with token authentication, used the way a user would:
`ray job submit` of `maskrl train` (the job's driver joins this head, not a local instance of its
own), the head's Prometheus endpoint listing the driver's `maskrl_*` gauges, and a dashboard
that refuses clients without the token and is not reachable from outside the machine.

The head gets its own short temp dir (AF_UNIX socket paths must stay under 107 bytes) and its
own free ports for every listener, so it can run beside another Ray instance on the machine
(e.g. a concurrent test module's `ray.init(address="local")`), and it is torn down without
`ray stop`, which would stop every Ray instance on the machine (see `_stop_head`). On a loaded
machine its raylet is given longer to register and a failed start is retried once
(`actors.runtime.start_ray`).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from actors.metrics import gauge_name
from maskrl.config import to_yaml
from maskrl.metrics import read_metrics
from tests.helpers import REPO as ROOT, tiny_checkpoint, tiny_config

RAY = str(Path(sys.executable).with_name("ray"))  # the venv's `ray` CLI, next to its python
JOB_TIMEOUT_S = 360


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _auth_token() -> str | None:
    """The token Ray's clients would use: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
        if path and Path(path).is_file() and Path(path).read_text().strip():
            return Path(path).read_text().strip()
    return None


def _non_loopback_ipv4() -> list[str]:
    return sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                   if a.family == socket.AF_INET and not a.address.startswith("127.")})


def _http_get(url: str, token: str | None = None, timeout: float = 10) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


@dataclass
class Head:
    temp_dir: str
    gcs_port: int
    dashboard_port: int
    metrics_port: int
    token: str
    env: dict[str, str]  # the environment of every `ray` CLI call: RAY_AUTH_MODE=token, no RAY_ADDRESS
    session: int  # session id of the `ray start` process; every daemon it spawned inherits it
    start_output: str

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def ray(self, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], cwd=ROOT, env=self.env if env is None else env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)

    def scrape(self) -> str:
        return _http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")[1]


def _head_processes(temp_dir: str, session: int) -> list[psutil.Process]:
    """This head's processes: those in the `ray start` session or naming the head's temp dir on
    their command line (gcs_server, raylet, dashboard, log monitor, ...), and all their descendants
    (workers; a job's entrypoint, which Ray starts in a session of its own)."""
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid == os.getpid():
                continue
            if os.getsid(proc.pid) == session or temp_dir in " ".join(proc.info["cmdline"] or ()):
                roots.append(proc)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    found = {p.pid: p for p in roots}
    for proc in roots:
        try:
            found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.Error:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def _stop_head(temp_dir: str, session: int) -> None:
    """`ray stop --force` for this head only.

    `ray stop` does not take an address: it kills every process on the machine whose name looks
    like a Ray daemon (gcs_server, raylet, dashboard, `ray::` workers, ...), so it would also stop a
    concurrent pytest's local instance or a user's cluster. Instead `ray start` is run in a new
    session (`start_new_session=True`), so every daemon it forks shares that session id, and this
    kills exactly the processes of that session, the ones whose command line names this head's
    unique temp dir, and their descendants: SIGTERM, then (as `--force` would) SIGKILL
    for what is left after 3 s.
    """
    procs = _head_processes(temp_dir, session)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)
    for proc in alive + _head_processes(temp_dir, session):
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _start_head(env: dict[str, str], timeout: float) -> tuple[str, dict[str, int], int, str, float]:
    """One `ray start --head` in a fresh temp dir on fresh ports. Returns (temp dir, ports, session,
    output, seconds it took); a failure stops what it left and raises with its output."""
    # /tmp/mrl-XXXXXX: the session dir Ray makes inside adds ~61 bytes to its socket paths
    temp_dir = tempfile.mkdtemp(prefix="mrl-", dir="/tmp")
    ports = {name: _free_port() for name in ("gcs", "dashboard", "metrics", "client", "agent_http", "agent_grpc",
                                              "runtime_env", "node_manager", "object_manager")}
    cmd = [
        RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={ports['gcs']}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
        f"--metrics-export-port={ports['metrics']}",
        # every other listener on a free port too: the defaults (10001, 52365, ...) may be taken by
        # another Ray instance on this machine
        f"--ray-client-server-port={ports['client']}", f"--dashboard-agent-listen-port={ports['agent_http']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}", f"--runtime-env-agent-port={ports['runtime_env']}",
        f"--node-manager-port={ports['node_manager']}", f"--object-manager-port={ports['object_manager']}",
        "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        '--system-config={"metrics_report_interval_ms": 1000}',  # gauges reach /metrics in ~1 s, not ~10 s
    ]
    t0 = time.monotonic()
    # a new session: every daemon `ray start` spawns inherits its session id, which `_stop_head` kills
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    session = proc.pid
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output = proc.communicate()[0] + f"\n(killed after {timeout:g} s)"
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        print(output)
        _stop_head(temp_dir, session)
        raise RuntimeError(f"`ray start --head` failed (exit {proc.returncode}) after {seconds:.1f} s:\n{output.strip()}")
    return temp_dir, ports, session, output, seconds


@pytest.fixture(scope="module")
def head():
    from actors.runtime import RayStartError, start_ray, tolerate_loaded_machine

    token = _auth_token() or secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,  # the same token for the head, its jobs and our clients, with or without ~/.ray/auth_token
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DS_ACCELERATOR="cpu",
        # the job's `python` must be this venv's interpreter (Ray runs entrypoints with the head's PATH)
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    )
    # a slow raylet (a loaded machine) is waited for, a failed start retried once on fresh ports
    wait = tolerate_loaded_machine(env)
    tries = []

    def attempt():
        tries.append(1)
        return _start_head(env, timeout=wait + 90)

    try:
        temp_dir, ports, session, output, seconds = start_ray(attempt, "start the token-authenticated head (`ray start --head`)",
                                                              undo=lambda: None)  # _start_head stopped it
    except RayStartError as err:
        pytest.fail(str(err))
    print(f"`ray start --head` came up in {seconds:.1f} s (attempt {len(tries)}, RAY_raylet_start_wait_time_s={wait})")
    h = Head(temp_dir, ports["gcs"], ports["dashboard"], ports["metrics"], token, env, session, output)
    try:
        deadline = time.monotonic() + 60
        while _http_get(f"{h.dashboard}/api/jobs/", token, timeout=5)[0] != 200:
            if time.monotonic() > deadline:
                print(output)
                pytest.fail("the head's dashboard did not answer /api/jobs/ within 60 s")
            time.sleep(0.5)
        yield h
    finally:
        _stop_head(temp_dir, session)


# -- a short `maskrl train` submitted as a Ray job; /metrics scraped while it runs ----------------
@dataclass
class JobRun:
    submission_id: str
    run: Path
    status: str
    info: object
    logs: str
    seconds: float
    scrapes: list[str] = field(default_factory=list)  # /metrics texts that held this run's gauges


def _gauge_values(text: str, metric: str, run: str) -> list[float]:
    name = "ray_" + gauge_name(metric)
    pattern = re.compile(rf'^{re.escape(name)}{{([^}}]*)}} (\S+)$', re.M)
    return [float(v) for labels, v in pattern.findall(text) if f'run="{run}"' in labels]


@pytest.fixture(scope="module")
def shapes_job(head, tmp_path_factory) -> JobRun:
    from ray.job_submission import JobStatus, JobSubmissionClient

    base = tmp_path_factory.mktemp("head_job")
    run = base / f"shapes-{uuid.uuid4().hex[:8]}"  # its name is the `run` label of the gauges
    cfg_path = base / "train.yaml"
    cfg_path.write_text(to_yaml(tiny_config(tiny_checkpoint(base / "tiny"), run)))
    sid = f"maskrl-test-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    submit = head.ray("job", "submit", "--address", head.dashboard, "--no-wait", "--submission-id", sid,
                      "--", "python", "-m", "maskrl.cli", "train", "--config", str(cfg_path))
    assert submit.returncode == 0, submit.stdout
    client = JobSubmissionClient(head.dashboard, headers={"Authorization": f"Bearer {head.token}"})
    scrapes = []
    while True:
        status = client.get_job_status(sid)
        text = head.scrape()  # the gauges may go when the job's driver exits: keep what we saw meanwhile
        if _gauge_values(text, "iteration", run.name):
            scrapes.append(text)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        if time.monotonic() - t0 > JOB_TIMEOUT_S:
            client.stop_job(sid)
            logs = head.ray("job", "logs", "--address", head.dashboard, sid).stdout
            pytest.fail(f"job {sid} still {status} after {JOB_TIMEOUT_S} s; logs:\n{logs[-6000:]}")
        time.sleep(1)
    seconds = time.monotonic() - t0
    time.sleep(2)  # two report intervals after the driver's exit
    after = bool(_gauge_values(head.scrape(), "iteration", run.name))
    logs = head.ray("job", "logs", "--address", head.dashboard, sid)
    assert logs.returncode == 0, logs.stdout
    print(f"job {sid}: {status} after {seconds:.1f} s; {len(scrapes)} scrapes with its gauges while it ran; "
          f"still listed 2 s after it ended: {after}")
    return JobRun(sid, run, str(status.value if hasattr(status, "value") else status), client.get_job_info(sid),
                  logs.stdout, seconds, scrapes)


@pytest.mark.slow  # a job submitted to a token-authenticated head: a minute of set-up
def test_ray_job_submit_runs_a_short_shapesworld_run(head, shapes_job):
    logs = shapes_job.logs
    assert shapes_job.status == "SUCCEEDED", f"{shapes_job.info.message}\n{logs[-6000:]}"
    lines = [line.strip() for line in logs.splitlines()]
    for it in (1, 2, 3):
        assert sum(line.startswith(f"iter {it:4d} ") for line in lines) == 1, logs[-4000:]
    checkpoint = [line for line in lines if line.startswith("checkpoint: ")]
    assert len(checkpoint) == 1 and Path(checkpoint[0].removeprefix("checkpoint: ")).is_dir(), logs[-2000:]
    assert Path(checkpoint[0].removeprefix("checkpoint: ")) == shapes_job.run / "checkpoints" / "iter_00003"

    rows = read_metrics(shapes_job.run)
    assert sorted(r["iteration"] for r in rows if r["iteration"] > 0) == [1, 2, 3]

    # the job's driver joined this head (through the RAY_ADDRESS Ray gives a job's entrypoint)
    # rather than starting a local instance of its own: the head recorded it as the job's driver,
    # and the dashboard the driver reports is this head's
    info = shapes_job.info
    assert info.driver_info is not None and info.job_id, info
    dashboards = re.findall(r"ray dashboard: http://(\S+)", logs)
    assert dashboards and set(dashboards) == {f"127.0.0.1:{head.dashboard_port}"}, dashboards
    assert "Started a local Ray instance" not in logs


@pytest.mark.slow  # a job submitted to a token-authenticated head: a minute of set-up
def test_metrics_endpoint_lists_the_maskrl_metrics(head, shapes_job):
    assert shapes_job.scrapes, (f"the head's /metrics never listed ray_maskrl_iteration{{run=\"{shapes_job.run.name}\"}} "
                                f"while job {shapes_job.submission_id} ({shapes_job.status}) ran")
    text = shapes_job.scrapes[-1]
    for metric in ("reward/mean", "iteration", "time/iteration"):
        name = "ray_" + gauge_name(metric)
        assert f"# TYPE {name} gauge" in text, name
        assert _gauge_values(text, metric, shapes_job.run.name), f"no {name}{{run=\"{shapes_job.run.name}\"}} in /metrics"
    seen = max(v for t in shapes_job.scrapes for v in _gauge_values(t, "iteration", shapes_job.run.name))
    assert 1 <= seen <= 3
    reward = _gauge_values(text, "reward/mean", shapes_job.run.name)[-1]
    assert 0.0 <= reward <= 1.0


# -- authentication and loopback -------------------------------------------------------------------
def test_client_without_the_token_is_refused(head):
    url = f"{head.dashboard}/api/jobs/"
    assert _http_get(url)[0] == 401
    assert _http_get(url, token="0" * len(head.token))[0] in (401, 403)
    assert _http_get(url, token=head.token)[0] == 200

    # the Jobs CLI without RAY_AUTH_MODE sends no token (even with ~/.ray/auth_token present)
    no_auth = {k: v for k, v in head.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    refused = head.ray("job", "list", "--address", head.dashboard, env=no_auth, timeout=60)
    assert refused.returncode != 0 and "Authentication" in refused.stdout, refused.stdout[-2000:]
    listed = head.ray("job", "list", "--address", head.dashboard, timeout=60)
    assert listed.returncode == 0, listed.stdout[-2000:]

    # --dashboard-host=127.0.0.1: the dashboard does not listen on the machine's other addresses (if any)
    for address in _non_loopback_ipv4():
        with socket.socket() as s:
            s.settimeout(3)
            with pytest.raises(OSError):  # refused (or dropped by a firewall)
                s.connect((address, head.dashboard_port))
