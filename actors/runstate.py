"""What a `maskrl train` run directory remembers: the driver state inside each checkpoint, the
newest checkpoint that verifies (for `--resume` and automatic recovery), and the event log of
every fault and what was done about it (`events.jsonl`)."""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from maskrl.checkpoints import CheckpointError, checkpoint_number, newest_first, verify

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
    def latest(cls, run: str | Path, events: EventLog | None = None) -> "DriverState | None":
        """The state of the newest checkpoint that verifies; newer ones that do not are reported
        (and logged) and skipped. None when the run has no complete checkpoint."""
        for directory in newest_first(Path(run) / "checkpoints"):
            try:
                verify(directory)
                if not (directory / STATE_FILE).is_file():
                    raise CheckpointError(f"checkpoint {str(directory)!r} has no {STATE_FILE}")
                return cls.read_checkpoint(directory)
            except CheckpointError as err:
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
