# model: tiny_bert
# expect: Generated Outputs:
# expect: (size=48)
"""vLLM's examples/pooling/embed pattern: LLM(model=...), llm.embed(prompts), print each
prompt's embedding (trimmed) and its size."""
import math
import os

from runner.engine import LLM

MODEL = os.environ["EXAMPLE_MODEL"]

# Sample prompts.
prompts = [
    "Hello, my name is",
    "The president of the United States is",
    "The capital of France is",
    "The future of AI is",
]


def main():
    # Create an LLM. You should pass a pooling model (an embedding model) here.
    llm = LLM(model=MODEL, enforce_eager=True, device="cpu")
    # Generate embedding. The output is a list of EmbeddingRequestOutputs.
    outputs = llm.embed(prompts)
    # Print the outputs.
    print("\nGenerated Outputs:\n" + "-" * 60)
    for prompt, output in zip(prompts, outputs):
        embeds = output.outputs.embedding
        embeds_trimmed = (str(embeds[:16])[:-1] + ", ...]") if len(embeds) > 16 else embeds
        print(f"Prompt: {prompt!r} \nEmbeddings: {embeds_trimmed} (size={len(embeds)})")
        print("-" * 60)
    assert len(outputs) == len(prompts)
    # embeddings come back L2-normalized by default
    assert all(abs(math.sqrt(sum(x * x for x in o.outputs.embedding)) - 1) < 1e-4
               for o in outputs)


if __name__ == "__main__":
    main()
