"""Diagnostics: where does the GPU path diverge from the torch reference path?"""
import random, sys, torch
from tests.tiny_models import make_tiny_model
from runner.engine import LLM, SamplingParams

path = make_tiny_model("/tmp/gpu_small", "llama_gqa", hidden_size=512, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=1024, num_hidden_layers=4,
                       max_position_embeddings=1024, initializer_range=float(sys.argv[1]))
rng = random.Random(0)
prompts = [{"prompt_token_ids": [rng.randrange(5, 384) for _ in range(rng.randint(4, 60))]}
           for _ in range(64)]
sp = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True, logprobs=1)
def run(**kw):
    llm = LLM(path, num_gpu_blocks_override=1024, max_model_len=256, max_num_seqs=64, **kw)
    outs = llm.generate(prompts, sp, use_tqdm=False)
    del llm
    return outs
def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y: return i
    return None
for dtype in ["float32", "bfloat16"]:
    ref = run(dtype=dtype, kernel_backend="torch", enforce_eager=True)
    for name, kw in [("triton-eager", dict(kernel_backend="triton", enforce_eager=True)),
                     ("triton-graphs", dict(kernel_backend="triton", enforce_eager=False))]:
        got = run(dtype=dtype, **kw)
        diffs = [first_diff(g.outputs[0].token_ids, r.outputs[0].token_ids) for g, r in zip(got, ref)]
        lp0 = max(abs(g.outputs[0].logprobs[0][g.outputs[0].token_ids[0]].logprob -
                      r.outputs[0].logprobs[0][r.outputs[0].token_ids[0]].logprob) for g, r in zip(got, ref))
        # margin of the reference's first token (top1 - top2 unavailable): use logprob of chosen
        print(dtype, name, "equal", sum(d is None for d in diffs), "/64; first diffs", sorted(d for d in diffs if d is not None)[:20], "max |dlogprob| tok0", round(lp0, 5))
