# model: tiny_llama
# expect: Generated Outputs:
# expect: Prompt:    'Hello, my name is'
"""vLLM's examples/offline_inference/basic/basic.py pattern: a list of prompts, one
SamplingParams, LLM(model=...), generate, print prompt and generated text."""
import os

from runner.engine import LLM, SamplingParams

MODEL = os.environ["EXAMPLE_MODEL"]

# Sample prompts.
prompts = [
    "Hello, my name is",
    "The president of the United States is",
    "The capital of France is",
    "The future of AI is",
]
# Create a sampling params object.
sampling_params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=16)


def main():
    # Create an LLM.
    llm = LLM(model=MODEL, device="cpu")
    # Generate texts from the prompts.
    # The output is a list of RequestOutput objects
    # that contain the prompt, generated text, and other information.
    outputs = llm.generate(prompts, sampling_params)
    # Print the outputs.
    print("\nGenerated Outputs:\n" + "-" * 60)
    for output in outputs:
        prompt = output.prompt
        generated_text = output.outputs[0].text
        print(f"Prompt:    {prompt!r}")
        print(f"Output:    {generated_text!r}")
        print("-" * 60)
    assert [o.prompt for o in outputs] == prompts
    assert all(1 <= len(o.outputs[0].token_ids) <= 16 for o in outputs)


if __name__ == "__main__":
    main()
