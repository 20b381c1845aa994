"""Engine benchmarks: vLLM's throughput and latency workloads, rooflines, HF side by side.

    python -m runner.engine_bench --model llama3_8b --workload throughput \
        --num-prompts 1000 --input-len 256 --output-len 256 --hf-num-prompts 256
    python -m runner.engine_bench --model llama3_8b --workload latency \
        --batch-size 1 --input-len 32 --output-len 128 --compare-eager
    python -m runner.engine_bench --model llama3_8b --workload beam --beam-width 4 \
        --num-prompts 100 --input-len 256 --output-len 256
    python -m runner.engine_bench --model llama2_13b --tensor-parallel-size 2 ...
    python -m runner.engine_bench --model llama3_8b --quantization fp8 ...   (awq, gptq too)
    python -m runner.engine_bench --model llama3_8b --cpu-offload-gb 8 ...
    python -m runner.engine_bench --model llama3_8b --workload prefix --num-prompts 2000 \
        --prefix-len 1024 --input-len 256 --output-len 64 --max-num-seqs 512 \
        --max-num-batched-tokens 8192 [--no-prefix-caching]
    python -m runner.engine_bench --model llama3_8b --workload mc --num-prompts 1000 \
        [--context-len 512 --choice-len 16 --num-choices 4] [--no-prefix-caching]

Evaluation's shapes, for automatic prefix caching (on unless --no-prefix-caching):
- prefix: an evaluation set, one few-shot prefix of --prefix-len tokens before each prompt's
  own --input-len tokens, --output-len tokens out. Prompts are built exactly as
  ../shared/peers/vllm_peer.py builds them (random.Random(seed): the shared prefix first, then a
  64-prompt warm-up, then the timed prompts; ids in [10, vocab - 10)), the warm-up fills the
  cache and reset_prefix_cache() empties it before the timed run, so the figures compare.
- mc: a multiple-choice evaluation (lm-eval's loglikelihood requests): --num-prompts items,
  each a --context-len token context followed by --num-choices choices of --choice-len tokens,
  every choice one request with prompt_logprobs=1, max_tokens=1, temperature 0 (lm-eval's
  vLLM parameters). Same random source and warm-up / reset order (16 warm-up items).
Both record the timed run's prefix-cache queries and hits (tokens, vLLM's counters).

Models are real shapes with random weights (load_format='dummy'): a named shape from
MODEL_SHAPES or a local model folder. With --quantization awq / gptq the named shape's
config.json carries that method's quantization_config (4 bits, groups of 128), so the dummy
weights are valid packed int4 tensors; fp8 quantizes the dummy 16-bit weights at load.
Prompts are random token ids with fixed input/output lengths and ignore_eos, as in vLLM's benchmark_throughput/benchmark_latency. The result goes to
outputs/bench/<run-id>/benchmark.json with the device, the command, the engine's KV-cache
numbers, peak memory, the measured matmul and copy ceilings and the ratios against them (and
against HF transformers generate when asked). The runner's `mode=bench`
(runner/run/modes/bench.py) runs the same workloads from the composed Hydra config, through
the run's backend, into a versioned run folder.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Optional

import torch

from runner.engine.config import KV_CACHE_DTYPES
from runner.engine_bench_eval import _sync, run_mc, run_prefix

MODEL_SHAPES = {
    "llama2_7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                      max_position_embeddings=4096, rope_theta=10000.0),
    "llama2_13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40, vocab_size=32000,
                       max_position_embeddings=4096, rope_theta=10000.0),
    "llama3_8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      max_position_embeddings=8192, rope_theta=500000.0),
    "llama2_70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, vocab_size=32000,
                       max_position_embeddings=4096, rope_theta=10000.0),
}


# the quantization_config a named shape's config.json gets for --quantization awq / gptq
CHECKPOINT_QUANT_CONFIGS = {
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
            "version": "gemm"},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False,
             "sym": True, "checkpoint_format": "gptq"},
}


def model_folder(model: str, dtype: str = "bfloat16", quantization: Optional[str] = None) -> str:
    """A named shape -> a folder with only config.json (weights come from load_format=dummy)."""
    if model not in MODEL_SHAPES:
        if not os.path.isdir(model):
            raise ValueError(f"--model must be one of {sorted(MODEL_SHAPES)} or a model folder, "
                             f"got {model!r}.")
        return model
    quant = CHECKPOINT_QUANT_CONFIGS.get(quantization)
    folder = os.path.join(tempfile.gettempdir(), f"runner-shape-{model}"
                          + (f"-{quantization}" if quant else ""))
    os.makedirs(folder, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
           "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": dtype,
           "bos_token_id": 1, "eos_token_id": 2, **MODEL_SHAPES[model]}
    if quant:
        cfg["quantization_config"] = quant
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    return folder


def weight_bytes(hf_config, dtype_size: int, quantization: Optional[str]) -> float:
    """Bytes of the weights a decode step reads: the linear layers at their quantized width
    (int4: half a byte plus a 16-bit scale and zero per 128 weights; fp8: one byte), the LM head
    in the model's dtype."""
    head = hf_config.hidden_size * hf_config.vocab_size
    layers = count_params(hf_config) - head
    per_param = {None: dtype_size, "fp8": 1.0, "awq": 0.5 + 4 / 128,
                 "gptq": 0.5 + 2 / 128}.get(quantization, dtype_size)
    return layers * per_param + head * dtype_size


def count_params(hf_config) -> int:
    """Parameters that take part in a token's matmuls (all linear layers and the LM head)."""
    h, i, L = hf_config.hidden_size, hf_config.intermediate_size, hf_config.num_hidden_layers
    heads = hf_config.num_attention_heads
    kv = getattr(hf_config, "num_key_value_heads", heads)
    d = h // heads
    per_layer = h * (heads * d) + 2 * h * (kv * d) + (heads * d) * h + 3 * h * i
    return L * per_layer + h * hf_config.vocab_size


def random_prompts(n: int, input_len: int, vocab: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(10, vocab) for _ in range(input_len)]}
            for _ in range(n)]


# ---------------------------------------------------------------------------- ceilings
def measure_ceilings(device: torch.device) -> dict:
    """The card's bf16 matmul rate and device-to-device copy bandwidth, measured here."""
    if device.type != "cuda":
        return {}
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm = _time_cuda(lambda: a @ b, iters=20)
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    cp = _time_cuda(lambda: dst.copy_(src), iters=20)
    del a, b, src, dst
    torch.cuda.empty_cache()
    return {"matmul_tflops": 2 * n ** 3 / mm / 1e12, "copy_tb_per_s": 2 * (1 << 30) / cp / 1e12}


def _time_cuda(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------------------- workloads
def run_throughput(llm, prompts: list, output_len: int, lora: Optional[list] = None) -> dict:
    """`lora`: one LoRARequest per prompt (--lora-adapters), or None for the base model."""
    from runner.engine import SamplingParams
    sp = SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=output_len,
                        detokenize=False)
    kw = {} if lora is None else {"lora_request": lora[:len(prompts)]}
    _sync()
    start = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False, **kw)
    _sync()
    elapsed = time.perf_counter() - start
    n_in = sum(len(o.prompt_token_ids) for o in outs)
    n_out = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {"elapsed_s": elapsed, "num_requests": len(outs), "prompt_tokens": n_in,
            "output_tokens": n_out, "requests_per_s": len(outs) / elapsed,
            "total_tokens_per_s": (n_in + n_out) / elapsed, "output_tokens_per_s": n_out / elapsed}


def run_beam(llm, prompts: list, output_len: int, beam_width: int) -> dict:
    """The beam-search workload: every prompt's beams decode together, ignore_eos; tokens are
    counted as vLLM's throughput benchmark counts them (prompt + output per request)."""
    from runner.engine import BeamSearchParams
    params = BeamSearchParams(beam_width=beam_width, max_tokens=output_len, ignore_eos=True)
    _sync()
    start = time.perf_counter()
    outs = llm.beam_search(prompts, params)
    _sync()
    elapsed = time.perf_counter() - start
    n_in = sum(len(p["prompt_token_ids"]) for p in prompts)
    n_out = sum(len(o.sequences[0].tokens) - len(p["prompt_token_ids"])
                for o, p in zip(outs, prompts))
    return {"elapsed_s": elapsed, "num_requests": len(outs), "beam_width": beam_width,
            "prompt_tokens": n_in, "output_tokens": n_out,
            "requests_per_s": len(outs) / elapsed, "total_tokens_per_s": (n_in + n_out) / elapsed}


def run_latency(llm, batch_size: int, input_len: int, output_len: int, warmup: int,
                iters: int, vocab: int, seed: int) -> dict:
    from runner.engine import SamplingParams
    sp = SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=output_len,
                        detokenize=False)
    prompts = random_prompts(batch_size, input_len, vocab, seed)
    times = []
    for i in range(warmup + iters):
        _sync()
        t = time.perf_counter()
        llm.generate(prompts, sp, use_tqdm=False)
        _sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"median_latency_s": med, "p90_latency_s": sorted(times)[int(0.9 * (len(times) - 1))],
            "latencies_s": times, "output_tokens_per_s": batch_size * output_len / med}


def run_hf_throughput(folder: str, prompts: list, output_len: int, batch_size: int,
                      dtype: torch.dtype, device: torch.device) -> dict:
    """HF transformers generate on the same shapes (its own random weights), batch by batch."""
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(folder)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1e-3, 1e-3)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    _sync()
    start = time.perf_counter()
    n_out = 0
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            ids = torch.tensor([p["prompt_token_ids"] for p in prompts[i:i + batch_size]],
                               device=device)
            out = model.generate(ids, max_new_tokens=output_len, min_new_tokens=output_len,
                                 do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
            n_out += (out.shape[1] - ids.shape[1]) * ids.shape[0]
    _sync()
    elapsed = time.perf_counter() - start
    n_in = sum(len(p["prompt_token_ids"]) for p in prompts)
    del model
    _free()
    return {"elapsed_s": elapsed, "num_requests": len(prompts), "batch_size": batch_size,
            "total_tokens_per_s": (n_in + n_out) / elapsed, "output_tokens_per_s": n_out / elapsed}


def _close(llm, res: dict | None = None) -> None:
    """Stop the engine's tensor-parallel workers (the caller then drops its reference and
    calls _free). The run's numbers go to stderr first, so a teardown that fails still leaves
    them."""
    if res is not None:
        print("measured:", json.dumps(res), file=sys.stderr, flush=True)
    if llm.llm_engine is not None:
        llm.llm_engine.shutdown()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- driver
def build_llm(folder: str, args, enforce_eager: bool):
    from runner.engine import LLM
    kw = dict(load_format=getattr(args, "load_format", "dummy"), dtype=args.dtype,
              skip_tokenizer_init=True,
              enforce_eager=enforce_eager, gpu_memory_utilization=args.gpu_memory_utilization,
              max_num_seqs=args.max_num_seqs, seed=args.seed,
              tensor_parallel_size=getattr(args, "tensor_parallel_size", 1),
              disable_async_output_proc=getattr(args, "disable_async_output_proc", False),
              async_scheduling=getattr(args, "async_scheduling", True),
              kv_cache_dtype=getattr(args, "kv_cache_dtype", "auto"),
              disable_custom_all_reduce=getattr(args, "disable_custom_all_reduce", False),
              distributed_timeout_s=getattr(args, "distributed_timeout_s", 600.0),
              quantization=getattr(args, "quantization", None),
              cpu_offload_gb=getattr(args, "cpu_offload_gb", 0),
              enable_prefix_caching=not getattr(args, "no_prefix_caching", False))
    if getattr(args, "lora_adapters", 0):
        kw.update(enable_lora=True, max_loras=args.lora_adapters, max_lora_rank=args.lora_rank)
    if args.max_num_batched_tokens:
        kw["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.max_model_len:
        kw["max_model_len"] = args.max_model_len
    elif args.workload in ("prefix", "mc"):
        # vllm_peer.py's max_model_len, so that both engines capture and schedule alike (a
        # small model's own limit below it stays)
        from transformers import AutoConfig
        limit = getattr(AutoConfig.from_pretrained(folder), "max_position_embeddings", None)
        want = max(2048, _workload_len(args))
        if not limit or want <= limit:
            kw["max_model_len"] = want
    if args.kernel_backend:
        kw["kernel_backend"] = args.kernel_backend
    return LLM(folder, **kw)


def _workload_len(args) -> int:
    if args.workload == "mc":
        return args.context_len + args.choice_len + 1
    return args.prefix_len + args.input_len + args.output_len


def engine_facts(llm) -> dict:
    stats = llm.llm_engine.get_stats()
    facts = {k: stats[k] for k in ("num_gpu_blocks", "block_size", "kv_cache_token_capacity",
                                   "kv_cache_bytes", "kv_cache_dtype", "kernel_backend",
                                   "cuda_graph_steps",
                                   "num_preemptions", "model_load_seconds", "num_steps",
                                   "schedule_s", "execute_s", "process_s", "output_proc_s",
                                   "prepare_s", "forward_s", "sample_s")}
    facts["max_num_seqs"] = llm.llm_engine.scheduler_config.max_num_seqs
    facts["max_num_batched_tokens"] = llm.llm_engine.scheduler_config.max_num_batched_tokens
    facts["tensor_parallel_size"] = llm.llm_engine.config.parallel_config.tensor_parallel_size
    facts["async_output_proc"] = llm.llm_engine.async_output_proc
    facts["async_scheduling"] = llm.llm_engine.async_scheduling
    facts["num_async_steps"] = stats["num_async_steps"]
    facts["custom_all_reduce"] = stats["custom_all_reduce"]
    # the method the engine resolved (a checkpoint's config.json may name it)
    facts["quantization"] = llm.llm_engine.model_config.quantization
    model = getattr(llm.llm_engine.executor.model_runner, "model", None)
    offloader = getattr(model, "cpu_offloader", None)
    facts["cpu_offloaded_bytes"] = offloader.offloaded_bytes if offloader is not None else 0
    facts["enable_prefix_caching"] = stats["enable_prefix_caching"]
    facts["num_swapped_out"] = stats["num_swapped_out"]
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        peak = torch.cuda.max_memory_allocated()
        facts.update(peak_memory_bytes=peak, peak_memory_fraction=peak / total,
                     gpu_memory_utilization=llm.llm_engine.cache_config.gpu_memory_utilization)
    return facts


def run(args) -> dict:
    folder = model_folder(args.model, args.dtype, getattr(args, "quantization", None))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict = {
        "command": " ".join([os.path.basename(sys.executable), "-m", "runner.engine_bench",
                             *sys.argv[1:]]) if args.command is None else args.command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "model": args.model, "dtype": args.dtype, "workload": args.workload,
        "tensor_parallel_size": args.tensor_parallel_size,
        "quantization": getattr(args, "quantization", None),
        "cpu_offload_gb": getattr(args, "cpu_offload_gb", 0),
        "torch": torch.__version__,
    }
    result["ceilings"] = measure_ceilings(device)
    from transformers import AutoConfig
    hf_config = AutoConfig.from_pretrained(folder)
    params = count_params(hf_config)
    result["matmul_params"] = params
    vocab = hf_config.vocab_size
    if args.workload == "throughput":
        prompts = random_prompts(args.num_prompts, args.input_len, vocab, args.seed)
        lora = None
        if args.lora_adapters:
            from runner.engine_bench_lora import lora_requests, write_random_adapters
            where = tempfile.mkdtemp(prefix="bench-lora-")
            lora = lora_requests(write_random_adapters(
                hf_config, args.lora_adapters, args.lora_rank, where, args.seed,
                getattr(torch, args.dtype)), len(prompts))
            result["lora"] = {"adapters": args.lora_adapters, "rank": args.lora_rank,
                              "targets": "q,k,v,o,gate,up,down", "assignment": "round robin"}
        llm = build_llm(folder, args, args.enforce_eager)
        # Warm-up: the workload scaled down, wide enough that steps mix decodes with prompt
        # chunks that have a cached prefix, so the timed run meets no step shape first (the
        # kernels themselves no longer recompile for step-varying arguments)
        budget = llm.llm_engine.scheduler_config.max_num_batched_tokens
        num_warm = min(len(prompts), max(64, 2 * budget // max(args.input_len, 1)), 1024)
        run_throughput(llm, prompts[:num_warm], min(args.output_len, 32), lora)
        res = run_throughput(llm, prompts, args.output_len, lora)
        res.update(engine_facts(llm))
        result["engine"] = res
        if "matmul_tflops" in result["ceilings"]:
            # the ceiling of all the GPUs the model runs on (one card's, times the ranks)
            rate = result["ceilings"]["matmul_tflops"] * 1e12 * args.tensor_parallel_size
            flops = 2 * params * res["total_tokens_per_s"]
            result["engine"]["fraction_of_measured_matmul_roofline"] = flops / rate
            result["engine"]["roofline_tokens_per_s"] = rate / (2 * params)
        _close(llm, res)
        del llm
        _free()
        if args.hf_num_prompts:
            hf = run_hf_throughput(folder, prompts[:args.hf_num_prompts], args.output_len,
                                   args.hf_batch_size, getattr(torch, args.dtype), device)
            result["hf_transformers"] = hf
            result["speedup_vs_hf"] = res["total_tokens_per_s"] / hf["total_tokens_per_s"]
    elif args.workload in ("prefix", "mc"):
        llm = build_llm(folder, args, args.enforce_eager)
        if args.workload == "prefix":
            res = run_prefix(llm, args.prefix_len, args.input_len, args.output_len,
                             args.num_prompts, vocab, args.seed)
        else:
            res = run_mc(llm, args.num_prompts, args.context_len, args.choice_len,
                         args.num_choices, vocab, args.seed)
        res.update(engine_facts(llm))
        result["engine"] = res
        _close(llm, res)
        del llm
        _free()
    elif args.workload == "beam":
        prompts = random_prompts(args.num_prompts, args.input_len, vocab, args.seed)
        llm = build_llm(folder, args, args.enforce_eager)
        run_beam(llm, prompts[:4], 8, args.beam_width)                     # warm-up
        res = run_beam(llm, prompts, args.output_len, args.beam_width)
        res.update(engine_facts(llm))
        result["engine"] = res
        _close(llm)
        del llm
        _free()
    else:
        if args.compare_eager and device.type != "cuda":
            raise ValueError("--compare-eager compares CUDA graphs with eager mode: it needs a "
                             "CUDA device.")
        graphs = device.type == "cuda" and not args.enforce_eager
        modes = [not graphs] + ([True] if args.compare_eager and graphs else [])
        for eager in modes:
            llm = build_llm(folder, args, eager)
            res = run_latency(llm, args.batch_size, args.input_len, args.output_len,
                              args.warmup, args.iters, vocab, args.seed)
            res.update(engine_facts(llm))
            result["eager" if eager else "cuda_graphs"] = res
            _close(llm, res)
            del llm
            _free()
        main_key = "cuda_graphs" if graphs else "eager"
        bw = result["ceilings"].get("copy_tb_per_s")
        if bw:
            read = weight_bytes(hf_config, torch.empty((), dtype=getattr(torch, args.dtype))
                                .element_size(), getattr(args, "quantization", None))
            # each rank reads its 1/N of the weights per step, all ranks at once
            roof = bw * 1e12 / read * args.tensor_parallel_size * args.batch_size
            result[main_key]["weight_read_roofline_tokens_per_s"] = roof
            result[main_key]["fraction_of_weight_read_roofline"] = \
                result[main_key]["output_tokens_per_s"] / roof
        if "eager" in result and "cuda_graphs" in result:
            result["cuda_graphs_speedup"] = (result["eager"]["median_latency_s"]
                                             / result["cuda_graphs"]["median_latency_s"])
    return result


def write_result(result: dict, out_root: str) -> str:
    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    name = os.path.basename(os.path.normpath(result["model"]))
    tp = result.get("tensor_parallel_size", 1)
    folder = os.path.join(out_root, f"{name}-{result['workload']}" + (f"-tp{tp}" if tp > 1
                                                                       else ""), run_id)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "benchmark.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp, path)
    return path


def parse_args(argv: Optional[list] = None):
    ap = argparse.ArgumentParser(prog="python -m runner.engine_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama3_8b")
    ap.add_argument("--workload", choices=["throughput", "latency", "beam", "prefix", "mc"],
                    default="throughput")
    ap.add_argument("--prefix-len", type=int, default=1024,
                    help="prefix: shared tokens before each prompt's own --input-len")
    ap.add_argument("--context-len", type=int, default=512, help="mc: each item's context")
    ap.add_argument("--choice-len", type=int, default=16, help="mc: tokens of each choice")
    ap.add_argument("--num-choices", type=int, default=4, help="mc: choices per item")
    ap.add_argument("--no-prefix-caching", action="store_true",
                    help="enable_prefix_caching=False (it is on by default, as in vLLM)")
    ap.add_argument("--beam-width", type=int, default=4)
    ap.add_argument("--num-prompts", type=int, default=1000, help="(mc: items)")
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--load-format", default="dummy",
                    choices=["dummy", "auto", "safetensors", "pt"],
                    help="dummy: random weights of the model's shape (the default)")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES),
                    help="auto: the model's dtype; fp8: one byte per entry (twice the tokens)")
    ap.add_argument("--kernel-backend", default=None, choices=["auto", "triton", "torch"])
    ap.add_argument("--quantization", default=None, choices=["fp8", "awq", "gptq"],
                    help="fp8: quantize the dummy weights at load; awq / gptq: dummy int4 "
                         "weights in that checkpoint layout (4 bits, groups of 128)")
    ap.add_argument("--cpu-offload-gb", type=float, default=0,
                    help="GiB of weights kept in pinned CPU memory, streamed in per layer")
    ap.add_argument("--lora-adapters", type=int, default=0,
                    help="throughput: this many random LoRA adapters (all projections), one "
                         "per prompt round robin, in mixed batches (0: the base model)")
    ap.add_argument("--lora-rank", type=int, default=16, help="rank of --lora-adapters")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--disable-async-output-proc", action="store_true",
                    help="process each step's outputs before the next step starts")
    ap.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=True,
                    help="launch each step before reading the last one's tokens back "
                         "(--no-async-scheduling: read them first)")
    ap.add_argument("--tensor-parallel-size", type=int, default=1,
                    help="GPUs the model is split across (one process each)")
    ap.add_argument("--disable-custom-all-reduce", action="store_true",
                    help="tensor parallel: NCCL for every all-reduce (no one-shot kernel)")
    ap.add_argument("--compare-eager", action="store_true",
                    help="latency: also run enforce_eager=True and report the graph speedup")
    ap.add_argument("--hf-num-prompts", type=int, default=0,
                    help="throughput: run HF generate on this many of the prompts too")
    ap.add_argument("--hf-batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="outputs/bench")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.lora_adapters < 0 or args.lora_rank < 1:
        ap.error("--lora-adapters must be >= 0 and --lora-rank >= 1")
    if args.lora_adapters and args.workload != "throughput":
        ap.error(f"--lora-adapters runs with --workload throughput only, not {args.workload}")
    if args.lora_adapters and args.hf_num_prompts:
        ap.error("--hf-num-prompts compares the base model; leave it out with --lora-adapters")
    return args


def main(argv: Optional[list] = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    path = write_result(result, args.out)
    print(json.dumps(result, indent=2))
    print(f"benchmark.json: {path}")
    return result


if __name__ == "__main__":
    main()
