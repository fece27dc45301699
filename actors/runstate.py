"""What a `maskrl train` run directory remembers: the driver state inside each checkpoint, the
newest checkpoint that verifies (for `--resume` and automatic recovery), the event log of
every fault and what was done about it (`events.jsonl`), and the recipe the run was started
with (`config.yaml`), which decides what `maskrl train --config` does with a directory that
already holds a run (`plan_start`: continue it, start it over, or refuse)."""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from tqdm import tqdm

from maskrl.checkpoints import CheckpointError, checkpoint_number, newest_first, verify
from maskrl.config import ConfigError

STATE_FILE = "driver_state.json"
EVENTS_FILE = "events.jsonl"


class EventLog:
    """Append-only JSONL of faults and recoveries; counts survive a resume."""

    def __init__(self, run: Path):
        self.path = Path(run) / EVENTS_FILE
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()] if self.path.exists() else []
        self.counts = Counter(r["kind"] for r in rows)

    def log(self, kind: str, iteration: int, **detail) -> None:
        self.counts[kind] += 1
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "kind": kind, "iteration": iteration, **detail}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        tqdm.write(f"[{kind}] iteration {iteration}: " + ", ".join(f"{k}={v}" for k, v in detail.items()))


def read_events(run: str | Path) -> list[dict]:
    path = Path(run) / EVENTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@dataclass
class DriverState:
    """What a resumed run needs besides the checkpoint's weights and optimiser shards."""

    iteration: int  # iterations completed (= learner version)
    stream_position: int  # prompt stream index of the first prompt not yet trained on
    seed: int
    checkpoint: str  # the checkpoint directory holding this state
    extra: dict = field(default_factory=dict)

    def write(self, directory: Path) -> None:
        (Path(directory) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read_checkpoint(cls, directory: Path) -> "DriverState":
        """The state inside a verified checkpoint directory (which may have moved since)."""
        state = cls(**json.loads((Path(directory) / STATE_FILE).read_text()))
        state.checkpoint = str(directory)
        return state

    @classmethod
    def latest(cls, run: str | Path, events: EventLog | None = None, report: bool = True) -> "DriverState | None":
        """The state of the newest checkpoint that verifies; newer ones that do not are reported
        (unless `report` is False) and logged, and skipped. None when the run has no complete checkpoint."""
        for directory in newest_first(Path(run) / "checkpoints"):
            try:
                verify(directory)
                if not (directory / STATE_FILE).is_file():
                    raise CheckpointError(f"checkpoint {str(directory)!r} has no {STATE_FILE}")
                return cls.read_checkpoint(directory)
            except CheckpointError as err:
                if report:
                    tqdm.write(f"rejected {err}; falling back to the previous checkpoint")
                if events is not None:
                    events.log("checkpoint_rejected", checkpoint_number(directory), path=str(directory), error=str(err))
        return None

    @classmethod
    def read(cls, run: str | Path, events: EventLog | None = None) -> "DriverState":
        """As `latest`, for `--resume`: a run without a complete checkpoint is an error."""
        state = cls.latest(run, events)
        if state is None:
            raise FileNotFoundError(
                f"run directory {str(run)!r} has no complete checkpoint to resume from "
                "(not a `maskrl train` run, or it stopped before its first checkpoint)"
            )
        return state


# -- what `maskrl train --config` does with a run directory that already holds a run ---------------
CONFIG_FILE = "config.yaml"
# Keys that are not part of the recipe: `out` names the directory itself (the same directory may
# be spelled differently). Everything else must match for a run to be continued automatically;
# a deliberate change (more iterations, a rescaled pool) is `maskrl train --resume RUN key=value`.
NOT_RECIPE = frozenset({"out"})


def flat_keys(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested dict as {dotted key: leaf value} (lists and empty dicts are leaves)."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flat_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def recipe_of(cfg) -> dict[str, object]:
    """A run config (a TrainConfig) as a flat {dotted key: value} dict, enums by their values."""
    return flat_keys(OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True))


def recipe_differences(saved: dict, new: dict) -> list[str]:
    """The dotted keys whose values differ between two flattened recipes (`NOT_RECIPE` ignored)."""
    return sorted(k for k in saved.keys() | new.keys() if k not in NOT_RECIPE and saved.get(k, "<absent>") != new.get(k, "<absent>"))


@dataclass
class StartPlan:
    """What `maskrl train --config` does in its run directory, and the line that says so."""

    resume: bool
    line: str
    start: int = 0  # the iteration the run continues from (0: from its first weights)


def _has_run(run: Path) -> bool:
    return (run / CONFIG_FILE).is_file() or any(newest_first(run / "checkpoints"))


def plan_start(out: str | Path, recipe: dict, iterations: int, fresh: bool, saved: dict | None) -> StartPlan:
    """Decide what a `maskrl train --config` run does in `out`, which may hold an earlier run:

    - nothing there: a new run;
    - `fresh`: start over, replacing the run there (its outputs only);
    - the same recipe (flattened `recipe` equal to the run's `saved` one, `NOT_RECIPE` aside)
      with a complete checkpoint: continue from the newest one, as `--resume` would (a finished
      run is reported, nothing trained); with no checkpoint at all yet (it stopped before its
      first): start it over, nothing being lost;
    - anything else is a ConfigError saying what differs or what would be lost, before Ray starts.

    `saved` is the run's recipe, flattened (None when `out` holds no config.yaml)."""
    run = Path(out)
    if fresh:
        if not _has_run(run):
            return StartPlan(False, f"maskrl train: a new run in {out} ({iterations} iterations)")
        state = DriverState.latest(run, report=False)
        reached = f", which had reached iteration {state.iteration}," if state else ""
        return StartPlan(False, f"maskrl train: starting over in {out} (--fresh: the run there{reached} is replaced)")
    if not _has_run(run):
        return StartPlan(False, f"maskrl train: a new run in {out} ({iterations} iterations)")
    then = f"pass --fresh to start over in {out}, or choose another out"
    if saved is None:
        raise ConfigError(f"config key 'out': {str(out)!r} holds checkpoints but no {CONFIG_FILE} to compare this recipe "
                          f"with (not a `maskrl train` run); {then}")
    differ = recipe_differences(saved, recipe)
    if differ:
        shown = ", ".join(f"{k} ({saved.get(k, '<absent>')!r} there, {recipe.get(k, '<absent>')!r} here)" for k in differ[:8])
        more = f" and {len(differ) - 8} more" if len(differ) > 8 else ""
        raise ConfigError(
            f"config key 'out': {str(out)!r} holds a run of another recipe: {len(differ)} key(s) differ: {shown}{more}. "
            f"Continue it with its own recipe, change it deliberately with `maskrl train --resume {out} key=value`, "
            f"or {then}"
        )
    state = DriverState.latest(run, report=False)
    if state is None:
        if any(newest_first(run / "checkpoints")):
            raise ConfigError(f"config key 'out': the run in {str(out)!r} has checkpoints, none of which verifies "
                              f"(`maskrl.checkpoints.verify` names what is wrong); {then}")
        return StartPlan(False, f"maskrl train: starting the run in {out} over: it stopped before its first checkpoint "
                                f"(same recipe, {iterations} iterations)")
    if state.iteration >= iterations:
        return StartPlan(True, f"maskrl train: the run in {out} is finished (iteration {state.iteration} of {iterations}, "
                               f"same recipe): nothing to train, its results below; --fresh starts over", state.iteration)
    return StartPlan(True, f"maskrl train: continuing the run in {out} from its checkpoint at iteration {state.iteration} "
                           f"of {iterations} (same recipe; --fresh starts over)", state.iteration)
