# model: tiny_bert_classifier
# expect: Generated Outputs:
# expect: (size=3)
"""vLLM's examples/pooling/classify pattern: LLM(model=...), llm.classify(prompts), print each
prompt's class probabilities and their number."""
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
    # Create an LLM. You should pass a sequence classification model here.
    llm = LLM(model=MODEL, enforce_eager=True, device="cpu")
    # Generate logits. The output is a list of ClassificationRequestOutputs.
    outputs = llm.classify(prompts)
    # Print the outputs.
    print("\nGenerated Outputs:\n" + "-" * 60)
    for prompt, output in zip(prompts, outputs):
        probs = output.outputs.probs
        probs_trimmed = (str(probs[:16])[:-1] + ", ...]") if len(probs) > 16 else probs
        print(f"Prompt: {prompt!r} \nClass Probabilities: {probs_trimmed} (size={len(probs)})")
        print("-" * 60)
    assert all(abs(sum(o.outputs.probs) - 1) < 1e-5 for o in outputs)


if __name__ == "__main__":
    main()
