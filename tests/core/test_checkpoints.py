"""Atomic checkpoints: a write that crashes leaves nothing that loads; a truncated or corrupted
file is refused naming it; the newest checkpoint that verifies is the one a run resumes from."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from actors.runstate import DriverState, EventLog, read_events
from maskrl.checkpoints import MANIFEST, CheckpointError, checkpoint_number, newest_first, verify, write_atomically
from maskrl.models import ShowoPolicy, load_policy, save_policy
from tests.helpers import TINY


def save_run_checkpoint(run, iteration: int) -> None:
    torch.manual_seed(iteration)

    def write(staging):
        save_policy(ShowoPolicy(TINY), staging, extra={"iteration": iteration})
        DriverState(iteration, 4 * iteration, 0, "").write(staging)

    write_atomically(run / "checkpoints" / f"iter_{iteration:05d}", write)


def test_manifest_lists_every_file_and_the_checkpoint_loads(tmp_path):
    save_run_checkpoint(tmp_path, 1)
    ckpt = tmp_path / "checkpoints" / "iter_00001"
    files = json.loads((ckpt / MANIFEST).read_text())["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "driver_state.json"} <= set(files)
    assert files["model.safetensors"]["bytes"] == (ckpt / "model.safetensors").stat().st_size
    verify(ckpt)
    load_policy(ckpt)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["iter_00001"]  # no staging left behind


def test_a_crash_mid_write_leaves_nothing_that_loads(tmp_path):
    final = tmp_path / "checkpoints" / "iter_00002"

    def crash(staging):
        save_policy(ShowoPolicy(TINY), staging)
        raise KeyboardInterrupt  # the process is stopped after the weights, before the rest

    with pytest.raises(KeyboardInterrupt):
        write_atomically(final, crash)
    assert not final.exists() and list((tmp_path / "checkpoints").iterdir()) == []
    # a staging directory that a killed process left behind is never taken for a checkpoint
    staging = tmp_path / "checkpoints" / "iter_00002.partial-deadbeef"
    save_policy(ShowoPolicy(TINY), staging)
    assert list(newest_first(tmp_path / "checkpoints")) == []
    with pytest.raises(CheckpointError, match="staging directory of an unfinished write"):
        verify(staging)
    save_run_checkpoint(tmp_path, 1)  # the next writer clears it
    assert not staging.exists()


def test_truncated_or_corrupted_files_are_refused_by_name(tmp_path):
    save_run_checkpoint(tmp_path, 1)
    ckpt = tmp_path / "checkpoints" / "iter_00001"
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors is \d+ bytes, its manifest says \d+ \(truncated"):
        load_policy(ckpt)
    weights.write_bytes(data[:-4] + b"\0\0\0\0")  # same size, different bytes
    with pytest.raises(CheckpointError, match="model.safetensors does not match its SHA-256"):
        verify(ckpt)
    (ckpt / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="has no manifest.json: its write did not finish"):
        verify(ckpt)


def test_resume_point_is_the_newest_checkpoint_that_verifies(tmp_path):
    for it in (1, 2, 3):
        save_run_checkpoint(tmp_path, it)
    events = EventLog(tmp_path)
    assert DriverState.latest(tmp_path, events).iteration == 3
    newest = tmp_path / "checkpoints" / "iter_00003" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    state = DriverState.latest(tmp_path, events)
    assert (state.iteration, state.stream_position) == (2, 8)
    assert state.checkpoint == str(tmp_path / "checkpoints" / "iter_00002")
    [rejected] = read_events(tmp_path)
    assert rejected["kind"] == "checkpoint_rejected" and rejected["iteration"] == 3
    assert "model.safetensors" in rejected["error"] and "truncated" in rejected["error"]
    for it in (1, 2):
        (tmp_path / "checkpoints" / f"iter_{it:05d}" / MANIFEST).unlink()
    assert DriverState.latest(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint to resume from"):
        DriverState.read(tmp_path)


def test_rewriting_a_checkpoint_replaces_it_whole(tmp_path):
    save_run_checkpoint(tmp_path, 1)
    ckpt = tmp_path / "checkpoints" / "iter_00001"
    (ckpt / "stray.txt").write_text("from the old write")
    save_run_checkpoint(tmp_path, 1)
    assert not (ckpt / "stray.txt").exists()
    verify(ckpt)


def test_a_rewrite_interrupted_anywhere_keeps_a_checkpoint_that_loads(tmp_path, monkeypatch):
    save_run_checkpoint(tmp_path, 1)
    real_replace = os.replace
    calls = []

    def replace_then_stop(src, dst):  # the process stops right after the first rename
        real_replace(src, dst)
        calls.append(dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace_then_stop)
    with pytest.raises(KeyboardInterrupt):
        save_run_checkpoint(tmp_path, 1)
    monkeypatch.setattr(os, "replace", real_replace)
    assert [Path(c).name for c in calls] == ["iter_00001.previous"]  # the old copy, moved aside
    state = DriverState.latest(tmp_path)
    assert state.iteration == 1 and Path(state.checkpoint).name == "iter_00001.previous"
    load_policy(state.checkpoint)
    save_run_checkpoint(tmp_path, 1)  # the next write of the same iteration cleans up
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_00001"]


def test_checkpoints_are_ordered_by_number_and_other_names_ignored(tmp_path):
    for it in (99999, 100000):
        save_run_checkpoint(tmp_path, it)
    (tmp_path / "checkpoints" / "iter_best").mkdir()
    assert [checkpoint_number(p) for p in newest_first(tmp_path / "checkpoints")] == [100000, 99999]
