# model: tiny_llama
# expect: Same outputs across the two runs: True
# expect: Same random numbers outside the engine: True
"""vLLM's examples/offline_inference/reproducibility.py pattern: LLM(seed=SEED) makes random
sampling reproducible, and (vLLM seeds Python's, numpy's and torch's global generators) the
random state of the user's own code after it too."""
import gc
import os
import random

import numpy as np
import torch

from runner.engine import LLM, SamplingParams

MODEL = os.environ["EXAMPLE_MODEL"]
SEED = 42

prompts = [
    "Hello, my name is",
    "The president of the United States is",
    "The capital of France is",
    "The future of AI is",
]
sampling_params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=16)


def run_once():
    llm = LLM(model=MODEL, device="cpu", seed=SEED)
    # Random numbers drawn outside the engine, right after it was built: the same in every
    # run, because the engine seeded the global generators.
    outside = (random.randint(0, 10**9), float(np.random.rand()), float(torch.rand(1)))
    outputs = llm.generate(prompts, sampling_params)
    print("-" * 50)
    for output in outputs:
        print(f"Prompt: {output.prompt!r}\nGenerated text: {output.outputs[0].text!r}")
        print("-" * 50)
    texts = [o.outputs[0].text for o in outputs]
    del llm
    gc.collect()
    return texts, outside


def main():
    random.seed(1)          # the user's own state before: overwritten by the engine's seed
    first, outside_1 = run_once()
    random.seed(2)
    second, outside_2 = run_once()
    print(f"Same outputs across the two runs: {first == second}")
    print(f"Same random numbers outside the engine: {outside_1 == outside_2}")
    assert first == second and outside_1 == outside_2


if __name__ == "__main__":
    main()
