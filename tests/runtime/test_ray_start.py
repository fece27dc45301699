"""Starting Ray on a loaded machine (`actors.runtime.start_ray`): Ray's raylet registration wait
raised unless the user set it, one clean retry of a failed start, and a second failure an error
that names the setting and quotes the first attempt; `maskrl train` prints it without a
traceback. The failures are simulated; one local instance checks its workers' priority."""
from __future__ import annotations

import os
import subprocess

import pytest
import ray

from actors.runtime import (RAYLET_WAIT_S, RAYLET_WAIT_SETTING, WORKER_NICENESS_SETTING, RayStartError, start_ray,
                            tolerate_loaded_machine)
from maskrl.cli import CommandError, main
from maskrl.config import to_yaml
from tests.helpers import tiny_checkpoint, tiny_config

NODE_TIMED_OUT = ("The current node timed out during startup. This could happen because some of the raylet "
                  "failed to startup or the GCS has become overloaded.")  # what ray.init raises
TIMED_OUT = (  # the end of a failed `ray start --head`'s output
    "Traceback (most recent call last):\n  File \"ray/_private/node.py\", line 441, in __init__\n"
    f"Exception: {NODE_TIMED_OUT}")


def test_the_registration_wait_is_raised_unless_the_user_set_it(monkeypatch):
    monkeypatch.setenv(RAYLET_WAIT_SETTING, "")  # unset (and restored afterwards)
    assert tolerate_loaded_machine() == RAYLET_WAIT_S
    assert os.environ[RAYLET_WAIT_SETTING] == str(RAYLET_WAIT_S)

    monkeypatch.setenv(RAYLET_WAIT_SETTING, "300")
    assert tolerate_loaded_machine() == 300 and os.environ[RAYLET_WAIT_SETTING] == "300"
    env = {"PATH": "/bin"}  # the environment of a `ray start` subprocess
    assert tolerate_loaded_machine(env) == RAYLET_WAIT_S and env[RAYLET_WAIT_SETTING] == str(RAYLET_WAIT_S)
    env = {RAYLET_WAIT_SETTING: "45"}
    assert tolerate_loaded_machine(env) == 45 and env[RAYLET_WAIT_SETTING] == "45"


def test_workers_run_at_the_default_priority_unless_the_user_chose_one(monkeypatch):
    env = {}
    tolerate_loaded_machine(env)
    assert env[WORKER_NICENESS_SETTING] == "0"
    env = {WORKER_NICENESS_SETTING: "10"}
    tolerate_loaded_machine(env)
    assert env[WORKER_NICENESS_SETTING] == "10"


def test_a_failed_start_is_retried_once_after_stopping_what_it_left(monkeypatch):
    monkeypatch.setenv(RAYLET_WAIT_SETTING, "")
    left, undone, calls = [], [], []

    def attempt():
        calls.append(1)
        if len(calls) == 1:  # a daemon the failed start left running, like a raylet that came up late
            left.append(subprocess.Popen(["sleep", "60"]))
            raise Exception(TIMED_OUT)
        assert left[0].poll() is not None, "the retry ran while the first attempt's process was still alive"
        assert os.environ[RAYLET_WAIT_SETTING] == str(RAYLET_WAIT_S)
        return "up"

    assert start_ray(attempt, "start a test head", undo=lambda: undone.append(1)) == "up"
    assert len(calls) == 2 and undone == [1]
    assert left[0].returncode is not None


def test_a_second_failure_names_the_setting_and_quotes_the_first_attempt(monkeypatch):
    monkeypatch.setenv(RAYLET_WAIT_SETTING, "")
    failures = iter([Exception(TIMED_OUT), ConnectionError("GCS at 127.0.0.1:6379 did not answer")])
    calls = []

    def attempt():
        calls.append(1)
        raise next(failures)

    with pytest.raises(RayStartError) as info:
        start_ray(attempt, "start a test head")
    message = str(info.value)
    assert len(calls) == 2
    assert message.startswith("could not start a test head, in two attempts")
    assert f"raise {RAYLET_WAIT_SETTING} (now {RAYLET_WAIT_S} s)" in message
    assert "The current node timed out during startup" in message  # the first attempt's last lines
    assert "did not answer" in message  # and the second's
    assert isinstance(info.value, CommandError)  # the command line prints it without a traceback


def test_argument_errors_are_not_retried():
    calls = []

    def attempt():
        calls.append(1)
        raise ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not be provided.")

    with pytest.raises(ValueError):
        start_ray(attempt)
    assert len(calls) == 1


def test_maskrl_train_says_which_setting_to_raise_when_ray_cannot_start(monkeypatch, tmp_path, capsys):
    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(RAYLET_WAIT_SETTING, "")
    calls = []

    def init(*args, **kwargs):
        calls.append(kwargs.get("address"))
        raise Exception(NODE_TIMED_OUT)

    monkeypatch.setattr(ray, "init", init)
    config = tmp_path / "train.yaml"
    config.write_text(to_yaml(tiny_config(tiny_checkpoint(tmp_path / "tiny"), tmp_path / "run")))
    assert main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert calls == ["local", "local"]
    assert err.startswith("maskrl train: error: could not start a local Ray instance, in two attempts"), err
    assert RAYLET_WAIT_SETTING in err and "timed out during startup" in err
    assert "Traceback" not in err  # the message, not a stack of frames


def test_a_local_instance_runs_its_workers_at_nice_0_not_rays_15(ray_instance):  # last: the instance lives to the module's end
    """Under two busy loops at nice 0, a worker at Ray's 15 gets ~3% of a core (measured)."""

    @ray.remote(num_cpus=0)
    def nice_level() -> int:
        return os.nice(0)

    assert ray.get(nice_level.remote()) == os.nice(0) == 0
