"""Connecting to Ray and checking that the replicas fit, before any model loads.

    connect(ray_address) -> Connection    distributed.ray_address:
      null            the Ray instance this process already started (tests, a notebook), else a
                      new local one: ray.init() (Ray reads RAY_ADDRESS itself when it is set)
      auto            the running cluster this node belongs to (`ray start --head` / a worker)
      HOST:PORT       a cluster's head (its GCS port, 6379 by default)
      ray://HOST:PORT a cluster through Ray Client (needs ray[client])
    An address that answers nothing is one line within seconds (a TCP probe first: ray.init
    itself waits minutes on a dead address).

    replica_resources(args, distributed, cpu_threads) -> ReplicaResources
      device auto means CUDA when the cluster has GPUs, else the CPU (the local engine's rule,
      asked of Ray instead of this process); a CUDA replica asks Ray for tensor_parallel_size
      GPUs on one node, a CPU replica for distributed.num_cpus_per_replica CPUs.
    check_capacity(resources, n, ray, address)
      every live node's GPUs (CPUs) are counted in whole replicas: data_parallel_size=4 with
      tensor_parallel_size=2 needs four groups of two GPUs, each group on one node. Too few is
      one line naming both numbers, before any actor starts.

Every error here is a ClusterError (a ConfigError): the CLI reports it in one line and no run
folder is made.
"""
from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Any, Optional

from runner.validation import ConfigError

PROBE_TIMEOUT_S = 5.0  # a TCP connect to a live head answers in milliseconds
RAY_PIP = "pip install 'ray==2.60.0'"  # or pip install 'runner[ray]'


class ClusterError(ConfigError):
    """Ray is missing, unreachable, or has too few resources for the replicas."""


@dataclass
class Connection:
    ray: Any  # the ray module
    started_here: bool  # ray.init() was called by this backend: it also shuts Ray down
    address: str  # what the user asked for, for messages and the manifest


@dataclass
class ReplicaResources:
    device: str  # "cuda" | "cpu": what each replica's engine runs on
    num_gpus: int  # per replica (tensor_parallel_size on CUDA, 0 on the CPU)
    num_cpus: float  # per replica
    cpu_threads: Optional[int]  # torch threads of a CPU replica (None on CUDA)


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("engine.data_parallel_size > 1 (or engine.backend=ray) runs the "
                           f"replicas on Ray, which is not installed: {RAY_PIP}") from None
    return ray


def _probe(shown: str, address: str) -> None:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        raise ClusterError(f"distributed.ray_address={shown}: nothing answers there "
                           f"({exc.__class__.__name__}: {exc}); start the cluster's head "
                           "(ray start --head) or fix the address") from None


def connect(ray_address: Optional[str]) -> Connection:
    ray = import_ray()
    shown = ray_address if ray_address is not None else "null (local)"
    if ray.is_initialized():
        return Connection(ray, False, shown)
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True}
    if ray_address is not None and ray_address != "auto":
        target = ray_address[len("ray://"):] if ray_address.startswith("ray://") else ray_address
        _probe(ray_address, target.split("/", 1)[0])
    try:
        if ray_address is None:
            ray.init(**kwargs)
        else:
            ray.init(address=ray_address, **kwargs)
    except ConnectionError as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = "start one with `ray start --head`, or set distributed.ray_address=null for a " \
               "local Ray" if ray_address == "auto" else "check the address and the cluster"
        raise ClusterError(f"distributed.ray_address={shown}: {line} ({hint})") from None
    except (ValueError, RuntimeError) as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClusterError(f"distributed.ray_address={shown}: Ray could not connect: "
                           f"{line}") from None
    return Connection(ray, True, shown)


def _gpus_seen(ray) -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def replica_resources(device: str, tensor_parallel_size: int, num_cpus_per_replica: float,
                      cpu_threads: Optional[int], ray) -> ReplicaResources:
    """What one replica asks Ray for (`device`: EngineArgs.device of the run)."""
    if device == "auto":
        device = "cuda" if _gpus_seen(ray) > 0 else "cpu"
    if device == "cuda":
        return ReplicaResources("cuda", int(tensor_parallel_size), float(num_cpus_per_replica),
                                None)
    threads = cpu_threads if cpu_threads is not None else max(1, int(num_cpus_per_replica))
    return ReplicaResources("cpu", 0, float(num_cpus_per_replica), threads)


def _fits(free: list[float], need: float) -> int:
    """How many replicas of `need` units fit into nodes with `free` units each."""
    if need <= 0:
        return math.inf  # type: ignore[return-value]
    return int(sum(math.floor(f / need + 1e-9) for f in free))


def check_capacity(res: ReplicaResources, n: int, ray, address: str) -> None:
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if res.device == "cuda":
        total = sum(float(r.get("GPU", 0)) for r in nodes)
        fit = _fits([float(r.get("GPU", 0)) for r in nodes], res.num_gpus)
        if fit < n:
            per = f" x tensor_parallel_size={res.num_gpus}" if res.num_gpus > 1 else ""
            where = f"{total:g} GPUs" + (f" ({fit} groups of {res.num_gpus} on one node)"
                                         if res.num_gpus > 1 else "")
            raise ClusterError(f"engine.data_parallel_size={n}{per} needs {n * res.num_gpus} "
                               f"GPUs; Ray (distributed.ray_address={address}) sees {where}; "
                               "lower engine.data_parallel_size or add GPUs to the cluster")
    fit = _fits([float(r.get("CPU", 0)) for r in nodes], res.num_cpus)
    if fit < n:
        total = sum(float(r.get("CPU", 0)) for r in nodes)
        raise ClusterError(f"engine.data_parallel_size={n} replicas of "
                           f"distributed.num_cpus_per_replica={res.num_cpus:g} CPUs need "
                           f"{n * res.num_cpus:g} CPUs; Ray (distributed.ray_address={address}) "
                           f"sees {total:g}; lower one of them")
