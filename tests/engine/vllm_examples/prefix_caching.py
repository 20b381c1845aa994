# model: tiny_llama
# expect: Generated answers are the same: True
"""vLLM's examples/offline_inference/prefix_caching.py pattern: a long shared prefix, an LLM
without and one with enable_prefix_caching, a warm-up generate, then the same prompts again;
the cached run must give the same (greedy) text."""
import gc
import os

from runner.engine import LLM, SamplingParams

MODEL = os.environ["EXAMPLE_MODEL"]

# A long common prefix shared by every prompt.
prefix = (
    "You are an expert school principal, skilled in effectively managing faculty and staff. "
    "Draft 10-15 questions for a potential first grade Head Teacher for my K-12, "
    "all-girls', independent school that emphasizes community, joy in learning, and "
    "a strong academic focus. The questions should be open-ended. "
)
prompts = [
    "Hello, my name is",
    "The president of the United States is",
    "The capital of France is",
    "The future of AI is",
]
generating_prompts = [prefix + prompt for prompt in prompts]
sampling_params = SamplingParams(temperature=0.0, max_tokens=12)


def main():
    # Create an LLM without prefix caching as a baseline.
    regular_llm = LLM(model=MODEL, device="cpu", enable_prefix_caching=False)
    print("Results without `enable_prefix_caching`")
    outputs = regular_llm.generate(generating_prompts, sampling_params)
    regular_generated_texts = []
    for output in outputs:
        regular_generated_texts.append(output.outputs[0].text)
        print(f"Prompt: {output.prompt!r}\nGenerated text: {output.outputs[0].text!r}")
    print("-" * 50)
    del regular_llm
    gc.collect()

    # Create an LLM with prefix caching enabled.
    prefix_cached_llm = LLM(model=MODEL, device="cpu", enable_prefix_caching=True)
    # Warmup so that the shared prompt's KV cache is computed.
    prefix_cached_llm.generate(generating_prompts[0], sampling_params)
    outputs = prefix_cached_llm.generate(generating_prompts, sampling_params)
    print("Results with `enable_prefix_caching`")
    cached_generated_texts = []
    for output in outputs:
        cached_generated_texts.append(output.outputs[0].text)
        print(f"Prompt: {output.prompt!r}\nGenerated text: {output.outputs[0].text!r}")
    print("-" * 50)
    generated_same = all(
        regular_generated_texts[i] == cached_generated_texts[i] for i in range(len(prompts)))
    print(f"Generated answers are the same: {generated_same}")
    # a second pass over the same prompts hits the cache again
    again = [o.outputs[0].text for o in prefix_cached_llm.generate(generating_prompts,
                                                                   sampling_params)]
    assert generated_same and again == cached_generated_texts


if __name__ == "__main__":
    main()
