"""The driver's handle of the learner group: the N DeepSpeed ranks (actors.learner) placed in
their pool, a rendezvous, then every call made on all ranks and waited for rank by rank, so
that a dead rank is `LearnerLost` at once, even while the others are blocked in a collective
with it."""
from __future__ import annotations

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

from actors.learner import LearnerActor
from actors.pools import CallsTimedOut, dead_actors, rendezvous_hosts, wait_each
from maskrl.cli import CommandError
from maskrl.train_config import TrainConfig


class LearnerLost(RuntimeError):
    """A learner rank (or its node) is gone: the group cannot continue; the driver rebuilds it
    from the last complete checkpoint."""

    iteration: int | None = None  # where it happened (set by the driver on the way out)


class LearnerSetupTimeout(CommandError, RuntimeError):
    """The ranks did not all finish set-up in time: a capacity problem to report (`maskrl train`
    prints it without a traceback), not a lost rank to rebuild."""


class LearnerGroup:
    """Driver-side handle of the N ranks: rendezvous, then every call goes to all ranks.

    Every call waits for the ranks one by one and stops at the first failure: a dead rank raises
    `LearnerLost` at once, even while the others are still blocked in a collective with it."""

    def __init__(self, pool, share, cfg: TrainConfig, policy_dir: str, version: int, optimizer_dir: str | None):
        n = pool.spec.count
        self.ranks = [LearnerActor.options(**pool.options(r, share)).remote(r, n, cfg, share.threads, share.gpus > 0) for r in range(n)]
        master, _ = rendezvous_hosts(self._all([r.address.remote() for r in self.ranks]))
        port = self._all([self.ranks[0].free_port.remote(master)])[0]
        # bounded: a rank that never joins (an overloaded node, a stuck import) is named, not waited for
        # forever; the ranks' own rendezvous and collectives give up after the same time
        try:
            self.info = self._all([r.setup.remote(master, port, policy_dir, version, optimizer_dir) for r in self.ranks],
                                  setup_timeout_s=cfg.cluster.learner.collective_timeout_s)
        except LearnerSetupTimeout:
            self.shutdown()  # no half-set-up rank is left holding its pool's CPUs
            raise

    def _all(self, refs: list, setup_timeout_s: float | None = None) -> list:
        try:
            wait_each(refs, setup_timeout_s)
            return ray.get(refs)
        except CallsTimedOut as err:
            raise LearnerSetupTimeout(
                f"learner set-up: ranks {err.pending} had not finished after {setup_timeout_s:g}s "
                f"(cluster.learner.collective_timeout_s); their logs are in the Ray dashboard. On an overloaded "
                f"machine, raise that setting or free its CPUs") from err
        except RayActorError as err:
            raise LearnerLost(f"a learner rank is gone: {_first_line(err)}") from err
        except ObjectLostError as err:  # an input batch went with its node; the ranks may now disagree
            raise LearnerLost(f"an input of the learner was lost with its node: {_first_line(err)}") from err
        except RayTaskError as err:  # a failed collective on a live rank means its peer is gone
            dead = self.dead_ranks()
            if dead:
                raise LearnerLost(f"learner ranks {dead} are gone ({_first_line(err)})") from err
            raise  # every rank is alive: a real error, reported as it is

    def dead_ranks(self, timeout_s: float = 30.0) -> list[int]:
        """Ranks whose actor is dead (a rank stuck in a collective with a dead one is not)."""
        return dead_actors(self.ranks, timeout_s)

    def update(self, iteration: int, batch_refs: list, planned: list[int]) -> dict[str, float]:
        return self._all([r.update.remote(iteration, batch_refs, planned) for r in self.ranks])[0]

    def publish(self, version: int):
        """Object-store transport: the ref of rank 0's full weights (put once, read by every worker)."""
        refs = [r.publish.remote(version, "object_store") for r in self.ranks]
        self._all(refs[1:])
        ray.wait(refs[:1], fetch_local=False)  # a failure of rank 0 surfaces where the workers load it
        return refs[0]

    def publish_collective(self, version: int, group: str, bucket_bytes: int) -> list:
        """Collective transport: refs of the ranks' publish calls (rank 0 broadcasts to `group`)."""
        return [r.publish.remote(version, "collective", group, bucket_bytes) for r in self.ranks]

    def save(self, directory: str, extra: dict) -> dict[str, dict]:
        """Every rank writes its part into `directory`; returns the digests of all files written."""
        return {k: v for part in self._all([r.save.remote(directory, extra) for r in self.ranks]) for k, v in part.items()}

    def shutdown(self) -> None:
        for r in self.ranks:
            ray.kill(r)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]

