"""The driver's work queue of a data-parallel run: which request is where, and exactly once.

    WorkQueue(replicas, capacity)
      put(rid, request)          a request waits in the queue (FIFO)
      take(replica, limit) -> [(rid, request)]
                                 as many as the replica has room for (capacity minus what it
                                 holds; at most `limit`: the backend passes each replica its
                                 share of the queue, so a short run is split too): a faster
                                 replica comes back sooner and takes more, so replicas of
                                 different speed stay busy (no fixed shards)
      finish(replica, rid) -> bool
                                 True once per request, from the replica that holds it; a late
                                 or repeated output (a request that was re-queued, aborted or
                                 already finished) is False and is dropped
      fail(replica) -> [rid]     the replica is gone: what it held goes back to the front of
                                 the queue, in submission order, for the others to take
      abort(rids) -> {replica: [rid]}
                                 dropped from the queue; those a replica holds are returned so
                                 the backend can abort them there

No Ray here (runner/backends/ray.py drives it; tests/runner/test_ray_dispatch.py drives it with
fakes). Requests of one item are submitted one after another and leave the queue in that order,
so a multiple-choice item's continuations usually land on one replica and share its prefix cache.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable, Optional


class WorkQueue:
    def __init__(self, replicas: Iterable[int], capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._queue: OrderedDict[str, Any] = OrderedDict()  # rid -> request, waiting
        self._order: dict[str, int] = {}  # rid -> submission number (re-queue keeps the order)
        self._held: dict[int, OrderedDict[str, Any]] = {r: OrderedDict() for r in replicas}
        self._where: dict[str, int] = {}  # rid -> the replica holding it
        self._count = 0
        self.failed: list[int] = []

    # ------------------------------------------------------------------ state
    @property
    def alive(self) -> list[int]:
        return list(self._held)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def held(self, replica: int) -> int:
        return len(self._held[replica])

    def holding(self, replica: int) -> list[str]:
        return list(self._held[replica])

    @property
    def outstanding(self) -> int:
        """Requests not finished yet: queued plus held by a replica."""
        return len(self._queue) + len(self._where)

    # ------------------------------------------------------------------ moves
    def put(self, rid: str, request: Any) -> None:
        if rid in self._order:
            raise ValueError(f"request {rid!r} was already submitted")
        self._order[rid] = self._count
        self._count += 1
        self._queue[rid] = request

    def take(self, replica: int, limit: Optional[int] = None) -> list[tuple[str, Any]]:
        held = self._held[replica]
        out: list[tuple[str, Any]] = []
        while self._queue and len(held) < self.capacity and (limit is None or len(out) < limit):
            rid, request = self._queue.popitem(last=False)
            held[rid] = request
            self._where[rid] = replica
            out.append((rid, request))
        return out

    def finish(self, replica: int, rid: str) -> bool:
        if self._where.get(rid) != replica:
            return False
        del self._where[rid]
        del self._held[replica][rid]
        self._order.pop(rid, None)
        return True

    def fail(self, replica: int) -> list[str]:
        held = self._held.pop(replica, None)
        if held is None:
            return []
        self.failed.append(replica)
        for rid in held:
            del self._where[rid]
        # back to the front, and in the order they were first submitted
        merged = sorted([*held.items(), *self._queue.items()], key=lambda kv: self._order[kv[0]])
        self._queue = OrderedDict(merged)
        return list(held)

    def abort(self, rids: Iterable[str]) -> dict[int, list[str]]:
        remote: dict[int, list[str]] = {}
        for rid in rids:
            if rid in self._queue:
                del self._queue[rid]
            elif rid in self._where:
                replica = self._where.pop(rid)
                del self._held[replica][rid]
                remote.setdefault(replica, []).append(rid)
            self._order.pop(rid, None)
        return remote
