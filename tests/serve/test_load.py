"""A bounded concurrent load test on 127.0.0.1: 64 clients x 4 requests through AsyncOpenAI.
Every request is answered with the greedy text LLM.generate gives, none is lost, the server is
healthy afterwards, and continuous batching beats sending the same requests one by one."""
from __future__ import annotations

import asyncio
import time

import httpx

from tests.serve.conftest import MODEL_NAME

CLIENTS, PER_CLIENT, MAX_TOKENS = 64, 4, 8


def _prompt(i: int) -> str:
    return f"Question {i % 16}: who wrote the book about {i % 7} rivers?"


def test_concurrent_load(server, reference_llm):
    from openai import AsyncOpenAI, OpenAI

    from runner.engine import SamplingParams

    base, _ = server
    prompts = [_prompt(i) for i in range(CLIENTS * PER_CLIENT)]
    distinct = sorted(set(prompts))
    ref = reference_llm.generate(distinct, SamplingParams(temperature=0, max_tokens=MAX_TOKENS),
                                 use_tqdm=False)
    want = {p: o.outputs[0].text for p, o in zip(distinct, ref)}

    async def run_all():
        client = AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=120,
                             http_client=None)
        results: dict[int, str] = {}

        async def one_client(c: int):
            for k in range(PER_CLIENT):
                i = c * PER_CLIENT + k
                r = await client.completions.create(model=MODEL_NAME, prompt=prompts[i],
                                                    max_tokens=MAX_TOKENS, temperature=0)
                results[i] = r.choices[0].text

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one_client(c) for c in range(CLIENTS))), 120)
        elapsed = time.perf_counter() - t0
        await client.close()
        return results, elapsed

    results, concurrent_s = asyncio.run(run_all())
    assert len(results) == len(prompts)
    assert all(results[i] == want[p] for i, p in enumerate(prompts))

    with OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60) as client:
        t0 = time.perf_counter()
        for p in prompts:
            r = client.completions.create(model=MODEL_NAME, prompt=p, max_tokens=MAX_TOKENS,
                                          temperature=0)
            assert r.choices[0].text == want[p]
        sequential_s = time.perf_counter() - t0
    assert concurrent_s < sequential_s, (concurrent_s, sequential_s)
    assert httpx.get(f"{base}/health").status_code == 200
    print(f"\n{len(prompts)} requests: concurrent {concurrent_s:.2f}s, one by one "
          f"{sequential_s:.2f}s ({sequential_s / concurrent_s:.1f}x)")
