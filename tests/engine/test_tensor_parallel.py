"""Tensor parallelism on CPU with gloo: the same tokens and logprobs as one rank, shard-only
weight loading, refusal of sizes the model or machine cannot run, and worker failures (death,
hang, driver death) that end in a clear error with no orphan processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch

from runner.engine import LLM, SamplingParams
from runner.engine.distributed import verify_tensor_parallel
from runner.engine.executor import WorkerFailure
from runner.engine.models.llama import LlamaForCausalLM
from runner.engine.models.opt import OPTForCausalLM

# CPU runs gloo in CI; on a machine with 2+ GPUs the same tests run NCCL with Triton kernels
# and CUDA graphs (python -m pytest -m multi_gpu tests/engine/test_tensor_parallel.py)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.multi_gpu)]

PROMPTS = ["The quick brown fox", "Paris is the capital of France and",
           "Hello world! How are you", "A paged KV cache stores keys", "Numbers like 12"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not reaped yet) counts as gone
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def _wait_gone(pids, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def _generate(path, tp, prompts, params, device="cpu", **kw):
    from runner.engine.custom_all_reduce import _RENDEZVOUSED
    rendezvoused = bool(_RENDEZVOUSED)
    llm = LLM(path, tensor_parallel_size=tp, dtype="float32", seed=0, device=device, **kw)
    try:
        out = llm.generate(prompts, params, use_tqdm=False)
        stats = llm.llm_engine.get_stats()
        # one engine per process gets the custom all-reduce (custom_all_reduce._RENDEZVOUSED)
        first = not rendezvoused
        if device == "cuda":
            assert stats["cuda_graph_steps"] > 0
        # the one-shot all-reduce runs on GPUs (float32 here) unless it was turned off
        assert stats["custom_all_reduce"] == (device == "cuda" and tp > 1 and first
                                              and not kw.get("disable_custom_all_reduce"))
        return out
    finally:
        llm.llm_engine.shutdown()


def _assert_same(ref, out, atol=1e-4):
    for a, b in zip(ref, out):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for x, y in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert x.keys() == y.keys()
            for t in x:
                assert abs(x[t].logprob - y[t].logprob) < atol
        for x, y in zip((a.prompt_logprobs or [None])[1:], (b.prompt_logprobs or [None])[1:]):
            for t in x:
                assert abs(x[t].logprob - y[t].logprob) < atol


@pytest.fixture(scope="module")
def tiny_gqa(tiny_model_factory):
    # 4 query heads, 2 KV heads (GQA), llama3 rope scaling
    return tiny_model_factory("llama_gqa")


@pytest.mark.multi_gpu
def test_custom_all_reduce_gives_nccl_results(tiny_gqa):
    """The one-shot all-reduce and NCCL add the same two partial sums: identical outputs.
    First of this file's GPU tests: only the first tensor-parallel engine of a process gets the
    custom path, and the NCCL engine before it does not set it up."""
    from runner.engine.custom_all_reduce import _RENDEZVOUSED
    assert not _RENDEZVOUSED, "run this test before other in-process tensor-parallel GPU tests"
    sp = SamplingParams(temperature=0, max_tokens=24, logprobs=3)
    kw = dict(max_num_batched_tokens=16, max_num_seqs=4)
    nccl = _generate(tiny_gqa, 2, PROMPTS, sp, "cuda", disable_custom_all_reduce=True, **kw)
    custom = _generate(tiny_gqa, 2, PROMPTS, sp, "cuda", **kw)
    _assert_same(nccl, custom, atol=1e-6)


# the Llama relatives share one decoder, so each gets tensor parallelism: Llama-3 (GQA, llama3
# rope), Qwen2 (q/k/v biases sharded with their heads), Qwen3 (q/k norm on each rank's heads)
@pytest.mark.parametrize("arch", ["llama_gqa", "qwen2", "qwen3"])
@pytest.mark.parametrize("device", DEVICES)
def test_tp2_equals_tp1_greedy_and_logprobs(tiny_model_factory, arch, device):
    path = tiny_model_factory(arch)
    sp = SamplingParams(temperature=0, max_tokens=24, logprobs=3, prompt_logprobs=2)
    # a small token budget forces chunked prefill and mixed prefill/decode steps
    kw = dict(max_num_batched_tokens=16, max_num_seqs=4)
    ref = _generate(path, 1, PROMPTS, sp, device, **kw)
    out = _generate(path, 2, PROMPTS, sp, device, **kw)
    _assert_same(ref, out)


def test_tp4_replicates_kv_heads(tiny_gqa):
    """4 ranks, 2 KV heads: each KV head lives on two ranks."""
    sp = SamplingParams(temperature=0, max_tokens=12, logprobs=2)
    ref = _generate(tiny_gqa, 1, PROMPTS[:3], sp)
    out = _generate(tiny_gqa, 4, PROMPTS[:3], sp)   # CPU: 4 ranks need no 4 GPUs
    _assert_same(ref, out)


def test_tp2_beam_search_and_seeded_sampling(tiny_gqa):
    """Beams fork KV blocks (copy-on-write copies go to every rank); seeded sampling draws
    from the gathered logits on the driver."""
    from runner.engine import BeamSearchParams

    outs = {}
    for tp in (1, 2):
        llm = LLM(tiny_gqa, tensor_parallel_size=tp, dtype="float32", seed=0, device="cpu")
        try:
            beams = llm.beam_search([{"prompt": p} for p in PROMPTS[:2]],
                                    BeamSearchParams(beam_width=3, max_tokens=10))
            sampled = llm.generate(PROMPTS[:3], SamplingParams(temperature=0.8, seed=7, n=2,
                                                               max_tokens=10), use_tqdm=False)
        finally:
            llm.llm_engine.shutdown()
        outs[tp] = ([[s.tokens for s in b.sequences] for b in beams],
                    [[c.token_ids for c in r.outputs] for r in sampled])
    assert outs[1] == outs[2]


def test_each_rank_reads_only_its_shard(tiny_gqa, monkeypatch):
    """Rank 1 of 2 reads about half the checkpoint bytes, and holds exactly its slices of the
    HF weights (q heads 2-3, KV head 1, the second half of gate/up, ...)."""
    from safetensors.torch import load_file

    from runner.engine.config import EngineArgs
    from runner.engine.layers.checkpoint import CheckpointSlice
    from runner.engine.model_loader import get_model
    from runner.engine.parallel import ParallelContext

    read = {"bytes": 0}
    for name in ("narrow", "__getitem__", "materialize"):
        orig = getattr(CheckpointSlice, name)

        def counting(self, *a, _orig=orig):
            t = _orig(self, *a)
            read["bytes"] += t.numel() * t.element_size()
            return t
        monkeypatch.setattr(CheckpointSlice, name, counting)

    config = EngineArgs(tiny_gqa, dtype="float32", device="cpu").create_configs()
    model = get_model(config.model_config, torch.device("cpu"),
                      ParallelContext(tp_rank=1, tp_size=2))
    hf = load_file(os.path.join(tiny_gqa, "model.safetensors"))
    total = sum(t.numel() * t.element_size() for t in hf.values())
    norms = sum(t.numel() * t.element_size() for n, t in hf.items() if "norm" in n)
    assert read["bytes"] == pytest.approx((total - norms) / 2 + norms, rel=0.01)

    p = dict(model.named_parameters())
    d = 16                       # head_dim = 64 / 4
    qkv = p["model.layers.0.self_attn.qkv_proj.weight"]
    a = "model.layers.0.self_attn."
    torch.testing.assert_close(qkv[:2 * d], hf[a + "q_proj.weight"][2 * d:4 * d])
    torch.testing.assert_close(qkv[2 * d:3 * d], hf[a + "k_proj.weight"][d:2 * d])
    torch.testing.assert_close(qkv[3 * d:], hf[a + "v_proj.weight"][d:2 * d])
    torch.testing.assert_close(p[a + "o_proj.weight"], hf[a + "o_proj.weight"][:, 2 * d:])
    m = "model.layers.0.mlp."
    gate_up = p[m + "gate_up_proj.weight"]
    torch.testing.assert_close(gate_up[:64], hf[m + "gate_proj.weight"][64:])
    torch.testing.assert_close(gate_up[64:], hf[m + "up_proj.weight"][64:])
    torch.testing.assert_close(p[m + "down_proj.weight"], hf[m + "down_proj.weight"][:, 64:])
    torch.testing.assert_close(p["lm_head.weight"], hf["lm_head.weight"][192:])


@pytest.mark.parametrize("heads,kv,tp,pattern", [
    (4, 4, 3, "does not divide the model's num_attention_heads=4"),
    (12, 3, 2, "cannot split num_key_value_heads=3"),
    (8, 2, 8, None),                 # 2 KV heads, each replicated on 4 ranks
    (8, 4, 2, None),
])
def test_tp_sizes_the_model_allows(heads, kv, tp, pattern):
    cfg = SimpleNamespace(num_attention_heads=heads, num_key_value_heads=kv,
                          intermediate_size=96)
    if pattern is None:
        verify_tensor_parallel(tp, cfg, torch.device("cpu"), LlamaForCausalLM)
    else:
        with pytest.raises(ValueError, match=pattern):
            verify_tensor_parallel(tp, cfg, torch.device("cpu"), LlamaForCausalLM)


def test_tp_refuses_more_ranks_than_gpus_and_unsupported_families(monkeypatch):
    cfg = SimpleNamespace(num_attention_heads=8, num_key_value_heads=8, intermediate_size=64)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="tensor_parallel_size=4 needs 4 GPUs but 2 are visible"):
        verify_tensor_parallel(4, cfg, torch.device("cuda"), LlamaForCausalLM)
    with pytest.raises(NotImplementedError, match="OPTForCausalLM does not support tensor"):
        verify_tensor_parallel(2, cfg, torch.device("cpu"), OPTForCausalLM)


@pytest.mark.parametrize("device", DEVICES)
def test_worker_death_is_a_clear_error_and_leaves_no_process(tiny_gqa, device):
    llm = LLM(tiny_gqa, tensor_parallel_size=2, dtype="float32", device=device)
    executor = llm.llm_engine.executor
    pids = executor.pids
    sp = SamplingParams(temperature=0, max_tokens=8)
    assert llm.generate(PROMPTS[:1], sp, use_tqdm=False)[0].outputs[0].token_ids
    os.kill(pids[0], signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(WorkerFailure, match=r"rank 1 \(pid \d+\) exited with code -9"):
        llm.generate(PROMPTS, sp, use_tqdm=False)
    assert time.monotonic() - t0 < 10
    with pytest.raises(WorkerFailure):          # the engine stays failed, it does not hang
        llm.generate(PROMPTS[:1], sp, use_tqdm=False)
    llm.llm_engine.shutdown()
    assert _wait_gone(pids)


@pytest.mark.parametrize("device", DEVICES)
def test_hung_worker_times_out(tiny_gqa, device):
    llm = LLM(tiny_gqa, tensor_parallel_size=2, dtype="float32", distributed_timeout_s=3,
              device=device)
    pids = llm.llm_engine.executor.pids
    sp = SamplingParams(temperature=0, max_tokens=8)
    llm.generate(PROMPTS[:1], sp, use_tqdm=False)
    os.kill(pids[0], signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        with pytest.raises(WorkerFailure, match="distributed_timeout_s=3"):
            llm.generate(PROMPTS, sp, use_tqdm=False)
        assert time.monotonic() - t0 < 20
        assert _wait_gone(pids)                 # the hung worker was killed
    finally:
        if _alive(pids[0]):
            os.kill(pids[0], signal.SIGKILL)
        llm.llm_engine.shutdown()


def test_workers_exit_when_the_driver_is_killed(tiny_gqa, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        from runner.engine import LLM, SamplingParams
        if __name__ == "__main__":
            llm = LLM({tiny_gqa!r}, tensor_parallel_size=2, dtype="float32", device="cpu")
            llm.generate(["hello"], SamplingParams(max_tokens=2), use_tqdm=False)
            print(*llm.llm_engine.executor.pids, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=os.getcwd(),
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    pids = [int(p) for p in proc.stdout.split()]
    assert pids and _wait_gone(pids, timeout=10)


def test_module_level_llm_without_main_guard_names_the_fix(tiny_gqa, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(f"from runner.engine import LLM\n"
                      f"llm = LLM({tiny_gqa!r}, tensor_parallel_size=2, dtype='float32', "
                      f"device='cpu')\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode != 0
    assert "if __name__ == '__main__':" in proc.stderr
