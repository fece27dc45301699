"""The weight broadcast, a stage of every iteration: the learner's weights of version v reach
every rollout worker, over the object store (rank 0 puts them once, every worker loads them)
or a `ray.util.collective` broadcast from learner rank 0 (bucketed; see actors.weights).

Versions. The learner holds version `learner`; `sent` is the last version sent to the
workers (their tasks ask for it). Always `start <= sent <= learner`, and a worker that missed
a transfer is sent it again only while the learner still holds that version (otherwise the
next publish brings it the newer one; tasks it runs meanwhile come back as VersionMismatch
and are resubmitted). A broken broadcast is abandoned: learner rank 0 leaves its group (the
members inside fail at once), members yet to enter skip it, and the group is formed anew.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors import collective
from actors.learner_group import LearnerGroup, LearnerLost
from actors.pools import WorkerGroup, dead_actors, first_done, rendezvous_hosts
from actors.runstate import EventLog

GRACE_S = 30.0  # how long learner rank 0 may take to leave a broken weight broadcast


@dataclass
class Versions:
    start: int  # the run's (or the attempt's) first weights: what a fresh worker holds
    sent: int  # the last version sent to the rollout workers
    learner: int  # the version the learner holds

    def advance_learner(self, version: int) -> None:
        if version < self.learner:
            raise AssertionError(f"learner version going back from {self.learner} to {version}")
        self.learner = version

    def mark_sent(self, version: int) -> None:
        if not self.start <= version <= self.learner:
            raise AssertionError(f"sending version {version} outside [{self.start}, {self.learner}]")
        self.sent = version

    @property
    def resendable(self) -> bool:
        """Whether the learner still holds the version last sent (a missed transfer can be redone)."""
        return self.learner == self.sent


class WeightSync:
    """Publishes the learner's weights to the rollout group and knows what each worker holds."""

    def __init__(self, learner: LearnerGroup, rollout: WorkerGroup, transport: str, bucket_mb: float, use_nccl: bool,
                 version: int, events: EventLog, recover: Callable[[int, object], None], iteration: Callable[[], int]):
        self.learner, self.rollout, self.events = learner, rollout, events
        self.transport, self.bucket_bytes, self.use_nccl = transport, int(bucket_mb * 2**20), use_nccl
        self.recover, self.iteration = recover, iteration  # recover(worker index, the dead actor)
        self.versions = Versions(version, version, version)
        self.stored: tuple[int, ray.ObjectRef] | None = None  # (version, ref) of the weights in the object store
        self.pending: list = []  # (ref, (worker index, actor) or None for a learner rank) not yet waited for
        self.group: str | None = None
        self.group_stale = False
        self.abandoned: set[str] = set()
        self.last_load_seconds = 0.0

    def publish(self, version: int, wait: bool) -> float:
        """Weights `version` to every rollout worker; asynchronous loads queue behind the rollouts
        already running (and are awaited at the next publish). Returns the seconds spent here."""
        start = time.perf_counter()
        self.settle()
        self._send(version)
        if wait:
            self.deliver()
        return time.perf_counter() - start

    def learner_updated(self, version: int) -> None:
        self.versions.advance_learner(version)

    def deliver(self) -> None:
        """Wait until every rollout worker holds the version sent; a missed transfer is sent again
        while the learner still holds it."""
        for _ in range(2):
            if self.settle() or not self.versions.resendable:
                return
            self._send(self.versions.sent)
        if not self.settle():
            raise RuntimeError(f"weights of version {self.versions.sent} could not be delivered to the rollout workers")

    def worker_replaced(self, actor) -> None:
        """A fresh worker holds the start weights: give it the current ones when the learner still
        holds them, and form the collective group anew (it has a new member)."""
        v = self.versions
        if v.sent != v.start and v.resendable:
            actor.load_weights.remote(v.sent, self._in_object_store())
        self.group_stale = True

    def _in_object_store(self) -> ray.ObjectRef:
        if self.stored is None or self.stored[0] != self.versions.sent:
            self.stored = (self.versions.sent, self.learner.publish(self.versions.sent))
        return self.stored[1]

    def _send(self, version: int) -> None:
        self.versions.mark_sent(version)
        if self.transport == "collective":
            group = self._group()
            self.pending = [(ref, None) for ref in self.learner.publish_collective(version, group, self.bucket_bytes)] + [
                (w.receive_weights.remote(version, group, self.bucket_bytes), (i, w)) for i, w in enumerate(self.rollout.actors)
            ]
        else:
            self.stored = (version, self.learner.publish(version))
            ref = self.stored[1]
            self.pending = [(w.load_weights.remote(version, ref), (i, w)) for i, w in enumerate(self.rollout.actors)]

    def settle(self) -> bool:
        """Wait for the outstanding transfers, the first failure first; returns whether every worker
        got them (`last_load_seconds`: the slowest). A dead learner rank is `LearnerLost`; a dead
        worker is replaced; a broken broadcast is abandoned."""
        pending, self.pending, slowest, missed = dict(self.pending), [], 0.0, []
        while pending:
            ref = first_done(list(pending))
            member = pending.pop(ref)
            try:
                seconds = ray.get(ref)
            except (RayActorError, RayTaskError) as err:
                self._transfer_failed(err, member, missed)
                continue
            if isinstance(seconds, float):
                slowest = max(slowest, seconds)
        self.last_load_seconds = slowest
        if missed:
            self.events.log("weight_transfer_failed", self.iteration(), version=self.versions.sent, workers=sorted(missed))
        return not missed

    def _transfer_failed(self, err: BaseException, member, missed: list[int]) -> None:
        if self.learner.dead_ranks():  # the weights' source is gone: no worker can have them
            raise LearnerLost(f"a learner rank is gone while publishing weights: {err}") from err
        if isinstance(err, RayTaskError) and self.transport != "collective":
            raise err  # a load that failed on a live worker: a real error
        if member is not None:
            missed.append(member[0])
            if isinstance(err, RayActorError):
                self.recover(*member)
        if self.transport == "collective" and self.group not in self.abandoned:
            self._abandon_group(err)

    def _abandon_group(self, err: BaseException) -> None:
        self.group_stale = True
        self.abandoned.add(self.group)
        collective.abandon(self.group)
        try:
            ray.get(self.learner.ranks[0].leave_group.remote(self.group), timeout=GRACE_S)
        except (RayActorError, GetTimeoutError) as stuck:
            raise LearnerLost(f"learner rank 0 is stuck in a broken weight broadcast ({err})") from stuck

    def _group(self) -> str:
        """The collective group {learner rank 0, rollout workers}; formed anew after a worker is replaced."""
        if self.group and not self.group_stale:
            return self.group
        for i in dead_actors(self.rollout.actors, timeout_s=5.0):
            self.recover(i, self.rollout[i])
        members = [self.learner.ranks[0], *self.rollout.actors]
        if self.group:  # best effort: a member that is gone has left already
            ray.wait([m.leave_group.remote(self.group) for m in members], num_returns=len(members), timeout=60)
        self.group = f"maskrl-weights-{uuid.uuid4().hex[:12]}"
        try:
            store, binds = rendezvous_hosts(ray.get([m.address.remote() for m in members]))
            backend = collective.NCCL if self.use_nccl else collective.GLOO
            ray.get([m.join_group.remote(len(members), r, self.group, store, binds[r], backend) for r, m in enumerate(members)])
        except RayActorError as err:  # a member died while joining
            if self.learner.dead_ranks():
                raise LearnerLost(f"a learner rank is gone while forming the weight group: {err}") from err
            self.group_stale = True
            return self._group()  # bounded: every retry replaces a worker (cluster.max_restarts)
        self.group_stale = False
        return self.group
