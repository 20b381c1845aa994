"""vLLM 0.24 on a quantized workload, for side-by-side numbers with runner.engine_bench.

    PYTHONPATH=/tmp/site:. python3 scripts/peer_quant.py throughput --quantization fp8
    PYTHONPATH=/tmp/site:. python3 scripts/peer_quant.py latency --quantization awq

Real vLLM (staged by ../shared/peers: stage_vllm.sh puts it in /tmp/site) runs the same named
shape with dummy weights as runner.engine_bench: the shape's config.json comes from
runner.engine_bench.model_folder, including the AWQ / GPTQ quantization_config, so both engines
read the same checkpoint description. Prompts are random token ids, ignore_eos, as in the
engine's benchmark. Prints one `PEER {...}` JSON line.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=["throughput", "latency"])
    ap.add_argument("--model", default="llama3_8b")
    ap.add_argument("--quantization", default=None, choices=["fp8", "awq", "gptq"])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--max-num-batched-tokens", type=int, default=16384)
    args = ap.parse_args()

    from runner.engine_bench import model_folder
    from vllm import LLM, SamplingParams
    folder = model_folder(args.model, args.dtype, args.quantization)
    dtype = "float16" if args.quantization in ("awq", "gptq") else args.dtype
    llm = LLM(folder, load_format="dummy", dtype=dtype, quantization=args.quantization,
              skip_tokenizer_init=True, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=2048)
    vocab = json.load(open(f"{folder}/config.json"))["vocab_size"]
    rng = random.Random(0)
    n = args.num_prompts if args.workload == "throughput" else args.batch_size
    prompts = [{"prompt_token_ids": [rng.randrange(10, vocab) for _ in range(args.input_len)]}
               for _ in range(n)]
    sp = SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=args.output_len,
                        detokenize=False)
    result = {"engine": "vllm", "workload": args.workload, "model": args.model,
              "quantization": args.quantization, "dtype": dtype}
    if args.workload == "throughput":
        llm.generate(prompts[:64], SamplingParams(ignore_eos=True, max_tokens=16,
                                                  detokenize=False), use_tqdm=False)
        t = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        elapsed = time.perf_counter() - t
        tokens = sum(len(o.prompt_token_ids) + len(o.outputs[0].token_ids) for o in outs)
        result.update(elapsed_s=elapsed, total_tokens_per_s=tokens / elapsed)
    else:
        times = []
        for i in range(2 + args.iters):
            t = time.perf_counter()
            llm.generate(prompts, sp, use_tqdm=False)
            if i >= 2:
                times.append(time.perf_counter() - t)
        med = statistics.median(times)
        result.update(median_latency_s=med,
                      output_tokens_per_s=args.batch_size * args.output_len / med)
    print("PEER " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
