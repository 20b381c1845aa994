"""The data-parallel work queue and the Ray backend's dispatch, without Ray.

WorkQueue (runner/backends/dispatch.py) is checked directly: capacity, shares, exactly-once,
re-queue at the front in submission order, abort. RayBackend (runner/backends/ray.py) runs
against a fake `ray` module whose actors are in-process fake replicas (a fixed number of
requests finish per call, the "answer" is a function of the prompt), so the dispatch, the
re-queue after a replica dies, the failure record and the stats are checked in milliseconds.
The capacity checks and the unreachable-address line of runner/backends/ray_cluster.py need no
Ray instance either."""
from __future__ import annotations

import dataclasses
import logging
import time
import types

import pytest

from runner.backends import ray as ray_backend
from runner.backends import ray_cluster
from runner.backends.dispatch import WorkQueue
from runner.engine.outputs import CompletionOutput, RequestOutput
from runner.tasks.api import Request


# ------------------------------------------------------------------------------ WorkQueue
def test_queue_respects_capacity_and_limit_and_fifo():
    q = WorkQueue([0, 1], capacity=3)
    for k in range(8):
        q.put(f"r{k}", k)
    assert [rid for rid, _ in q.take(0)] == ["r0", "r1", "r2"]  # capacity
    assert q.take(0) == []  # full
    assert [rid for rid, _ in q.take(1, limit=2)] == ["r3", "r4"]
    assert q.queued == 3 and q.held(0) == 3 and q.outstanding == 8
    with pytest.raises(ValueError, match="already submitted"):
        q.put("r0", 0)


def test_queue_finishes_once_and_only_from_the_holder():
    q = WorkQueue([0, 1], capacity=4)
    q.put("a", 1)
    q.put("b", 2)
    q.take(0)
    assert not q.finish(1, "a")  # not held there
    assert q.finish(0, "a")
    assert not q.finish(0, "a")  # a repeated output
    assert q.outstanding == 1 and q.holding(0) == ["b"]


def test_failed_replica_requeues_at_the_front_in_submission_order():
    q = WorkQueue([0, 1], capacity=2)
    for k in range(6):
        q.put(f"r{k}", k)
    q.take(0)  # r0 r1
    q.take(1)  # r2 r3
    assert q.finish(0, "r0")
    assert q.fail(1) == ["r2", "r3"]
    assert q.alive == [0] and q.failed == [1]
    assert not q.finish(1, "r2")  # a late output of the dead replica is dropped
    assert [rid for rid, _ in q.take(0, limit=1)] == ["r2"]
    q.finish(0, "r1")
    assert [rid for rid, _ in q.take(0)] == ["r3"]  # holds r2 r3: full again
    q.finish(0, "r2")
    q.finish(0, "r3")
    assert [rid for rid, _ in q.take(0)] == ["r4", "r5"]
    assert q.fail(1) == []  # twice is harmless


def test_abort_drops_queued_and_returns_held():
    q = WorkQueue([0], capacity=1)
    q.put("a", 1)
    q.put("b", 2)
    q.take(0)
    assert q.abort(["a", "b", "zzz"]) == {0: ["a"]}
    assert q.outstanding == 0 and q.take(0) == []


# ------------------------------------------------------------------------------ a fake Ray
class FakeActorDied(Exception):
    pass


class FakeTaskError(Exception):
    def __init__(self, cause):
        super().__init__(str(cause))
        self.cause = cause


def answer(token_ids):
    return [(sum(token_ids) + k) % 97 for k in range(3)]


class FakeReplica:
    """What an EngineReplica does, with `speed` requests finishing per call."""

    def __init__(self, index, speed):
        self.index, self.speed = index, speed
        self.held: list = []
        self.dead = False
        self.calls = 0

    def load(self, args, cpu_threads):
        return {"stats": {"num_prompt_tokens": 0, "num_generation_tokens": 0,
                          "device": "cpu", "dtype": "float32"},
                "tokenizer": "TOK", "max_model_len": 64, "is_embedding_model": False,
                "model_info": {"resolved": "m", "load_seconds": 0.1},
                "where": {"replica": self.index, "host": f"node{self.index}", "pid": 1,
                          "cuda_visible_devices": None}}

    def run(self, new, budget_s):
        self.calls += 1
        self.held += new
        done, self.held = self.held[:self.speed], self.held[self.speed:]
        outs = [RequestOutput(rid, None, list(r.prompt_token_ids), None,
                              [CompletionOutput(0, "", answer(r.prompt_token_ids), None, None,
                                                finish_reason="length")], True) for rid, r in done]
        self.tokens = getattr(self, "tokens", 0) + 3 * len(outs)
        return outs, {"num_prompt_tokens": 0, "num_generation_tokens": self.tokens,
                      "device": "cpu", "dtype": "float32"}, 0.01

    def abort(self, rids):
        self.held = [(rid, r) for rid, r in self.held if rid not in rids]

    def close(self):
        pass


class FakeRef:
    def __init__(self, replica, method, args):
        self.replica, self.method, self.args = replica, method, args
        self.value = None
        self.evaluated = False

    def get(self):
        if self.replica.dead:
            raise FakeActorDied(f"replica {self.replica.index} was killed")
        if not self.evaluated:
            self.value = getattr(self.replica, self.method)(*self.args)
            self.evaluated = True
        return self.value


class FakeActor:
    def __init__(self, replica):
        self.replica = replica

    def __getattr__(self, name):
        replica = self.replica
        return types.SimpleNamespace(remote=lambda *a: FakeRef(replica, name, a))


class FakeRay:
    def __init__(self, speeds, gpus=0, cpus=8):
        self.speeds = speeds
        self.replicas: list[FakeReplica] = []
        self.exceptions = types.SimpleNamespace(RayActorError=FakeActorDied,
                                                RayTaskError=FakeTaskError)
        self._nodes = [{"Alive": True, "Resources": {"CPU": cpus, "GPU": gpus}}]
        self.killed = []

    def is_initialized(self):
        return True

    def cluster_resources(self):
        return {k: sum(n["Resources"].get(k, 0) for n in self._nodes) for k in ("CPU", "GPU")}

    def nodes(self):
        return self._nodes

    def remote(self, cls):
        fake = self

        class Options:
            def options(self, **kw):
                return self

            def remote(self, index):
                replica = FakeReplica(index, fake.speeds[index])
                fake.replicas.append(replica)
                return FakeActor(replica)

        return Options()

    def wait(self, refs, num_returns=1, timeout=None):
        return list(refs[:num_returns]), list(refs[num_returns:])

    def get(self, ref):
        if isinstance(ref, list):
            return [r.get() for r in ref]
        return ref.get()

    def kill(self, actor, no_restart=True):
        self.killed.append(actor.replica.index)
        actor.replica.dead = True

    def shutdown(self):
        pass


@dataclasses.dataclass
class FakeArgs:  # the EngineArgs fields the backend reads
    data_parallel_size: int
    device: str = "auto"
    tensor_parallel_size: int = 1
    max_num_seqs: int = 4


def _args(n):
    return FakeArgs(n)


def _distributed(**kw):
    base = dict(ray_address=None, num_cpus_per_replica=1, replica_queue_size=None,
                replica_call_s=0.01, replica_start_timeout_s=5.0)
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.fixture
def fake_ray(monkeypatch):
    def make(speeds, **kw):
        fake = FakeRay(speeds, **kw)
        monkeypatch.setattr(ray_cluster, "import_ray", lambda: fake)
        return fake

    return make


def _requests(n):
    from runner.engine import SamplingParams

    return {f"doc{k}/0": Request(prompt_token_ids=[k, k + 1, 7], params=SamplingParams())
            for k in range(n)}


def _drain(backend, requests, on_round=None):
    for rid, req in requests.items():
        backend.submit(rid, req)
    seen: list = []
    rounds = 0
    while len(seen) < len(requests):
        seen += backend.results()
        rounds += 1
        if on_round is not None:
            on_round(rounds)
        assert rounds < 1000
    return seen


def test_replicas_of_different_speed_share_the_queue(fake_ray):
    fake = fake_ray([1, 3])
    backend = ray_backend.RayBackend(_args(2), None, _distributed(replica_queue_size=4))
    requests = _requests(40)
    outs = _drain(backend, requests)
    assert sorted(o.request_id for o in outs) == sorted(requests)  # each exactly once
    for o in outs:
        assert o.outputs[0].token_ids == answer(requests[o.request_id].prompt_token_ids)
    done = {r["replica"]: r["requests"] for r in backend.stats()["data_parallel"]["replicas"]}
    assert done[0] + done[1] == 40 and done[1] > done[0]  # the faster one took more
    stats = backend.stats()
    assert stats["num_generation_tokens"] == 3 * 40  # summed over the replicas
    assert stats["device"] == "cpu" and backend.tokenizer == "TOK"
    with pytest.raises(RuntimeError, match="no request in flight"):
        backend.results()
    backend.close()
    assert sorted(fake.killed) == [0, 1]


def test_a_dead_replicas_requests_run_on_the_others_exactly_once(fake_ray, caplog):
    fake = fake_ray([2, 2, 2])
    backend = ray_backend.RayBackend(_args(3), None, _distributed(replica_queue_size=3))
    recorded = []
    backend.on_failure = recorded.append
    requests = _requests(30)

    def kill_replica_1(rounds):
        if rounds == 2:
            fake.kill(FakeActor(fake.replicas[1]))

    with caplog.at_level(logging.ERROR, logger="runner.backend"):
        outs = _drain(backend, requests, kill_replica_1)
    ids = [o.request_id for o in outs]
    assert sorted(ids) == sorted(requests) and len(ids) == len(set(ids))
    assert len(recorded) == 1 and recorded[0]["replica"] == 1
    assert recorded[0]["requeued_requests"] > 0 and recorded[0]["replicas_left"] == 2
    assert "replica 1 (host node1) failed" in caplog.text
    entry = backend.manifest_entry()
    assert [r["status"] for r in entry["replicas"]] == ["alive", "failed", "alive"]
    assert entry["failures"] == recorded
    assert sum(r["requests"] for r in entry["replicas"]) == 30


def test_every_replica_dead_fails_the_run(fake_ray):
    fake = fake_ray([1])
    backend = ray_backend.RayBackend(_args(1), None, _distributed())
    fake.replicas[0].dead = True
    with pytest.raises(RuntimeError, match="every replica .* failed"):
        _drain(backend, _requests(3))


def test_an_engine_error_in_a_replica_fails_the_run_with_its_own_exception(fake_ray):
    fake = fake_ray([1, 1])
    backend = ray_backend.RayBackend(_args(2), None, _distributed())

    def boom(new, budget_s):
        raise FakeTaskError(ValueError("prompt too long"))

    fake.replicas[0].run = boom
    with pytest.raises(ValueError, match="prompt too long"):
        _drain(backend, _requests(4))


def test_a_short_run_is_split_across_replicas(fake_ray):
    fake_ray([100, 100])
    backend = ray_backend.RayBackend(_args(2), None, _distributed(replica_queue_size=64))
    _drain(backend, _requests(10))
    assert [r["requests"] for r in backend.manifest_entry()["replicas"]] == [5, 5]


# ------------------------------------------------------------------------------ the cluster
def test_too_few_gpus_is_one_line_before_any_actor(fake_ray):
    fake = fake_ray([1, 1], gpus=1)
    with pytest.raises(ray_cluster.ClusterError) as e:
        ray_backend.RayBackend(_args(2), None, _distributed())
    assert "engine.data_parallel_size=2 needs 2 GPUs; Ray (distributed.ray_address=null " \
           "(local)) sees 1 GPUs" in str(e.value) and "\n" not in str(e.value)
    assert fake.replicas == []  # nothing started


def test_tensor_parallel_groups_must_fit_on_one_node():
    ray = types.SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": {"GPU": 3, "CPU": 8}},
                                               {"Alive": True, "Resources": {"GPU": 3, "CPU": 8}},
                                               {"Alive": False, "Resources": {"GPU": 8}}],
                                cluster_resources=lambda: {"GPU": 6})
    res = ray_cluster.replica_resources("auto", 2, 1, None, ray)
    assert (res.device, res.num_gpus) == ("cuda", 2)
    ray_cluster.check_capacity(res, 2, ray, "auto")  # one group of two on each node
    with pytest.raises(ray_cluster.ClusterError, match=r"needs 6 GPUs; .* sees 6 GPUs \(2 "
                                                       r"groups of 2 on one node\)"):
        ray_cluster.check_capacity(res, 3, ray, "auto")


def test_cpu_replicas_take_their_cpu_share_as_threads():
    ray = types.SimpleNamespace(cluster_resources=lambda: {"CPU": 2},
                                nodes=lambda: [{"Alive": True, "Resources": {"CPU": 2}}])
    res = ray_cluster.replica_resources("auto", 1, 2, None, ray)
    assert (res.device, res.num_gpus, res.cpu_threads) == ("cpu", 0, 2)
    assert ray_cluster.replica_resources("cpu", 1, 1, 3, ray).cpu_threads == 3  # cpu_threads=3
    with pytest.raises(ray_cluster.ClusterError, match="need 4 CPUs; .* sees 2"):
        ray_cluster.check_capacity(res, 2, ray, "null (local)")


def test_an_unreachable_ray_address_is_one_line_within_seconds():
    pytest.importorskip("ray")
    t0 = time.monotonic()
    with pytest.raises(ray_cluster.ClusterError) as e:
        ray_cluster.connect("127.0.0.1:1")
    assert time.monotonic() - t0 < 10
    assert str(e.value).startswith("distributed.ray_address=127.0.0.1:1: nothing answers there")
    with pytest.raises(ray_cluster.ClusterError, match="ray://127.0.0.1:1: nothing answers"):
        ray_cluster.connect("ray://127.0.0.1:1")
