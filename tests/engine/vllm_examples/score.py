# model: tiny_bert_cross_encoder
# expect: Generated Outputs:
# expect: Pair: ['What is the capital of France?', 'The capital of France is Paris.']
"""vLLM's examples/pooling/score pattern: a cross-encoder, one query scored against several
texts (1 -> N) with llm.score(text_1, texts_2); print each pair and its score."""
import os

from runner.engine import LLM

MODEL = os.environ["EXAMPLE_MODEL"]

# Sample prompts.
text_1 = "What is the capital of France?"
texts_2 = [
    "The capital of Brazil is Brasilia.",
    "The capital of France is Paris.",
]


def main():
    # Create an LLM. You should pass a cross-encoder (a one-label classifier) here.
    llm = LLM(model=MODEL, enforce_eager=True, device="cpu")
    # Generate scores. The output is a list of ScoringRequestOutputs.
    outputs = llm.score(text_1, texts_2)
    # Print the outputs.
    print("\nGenerated Outputs:\n" + "-" * 60)
    for text_2, output in zip(texts_2, outputs):
        score = output.outputs.score
        print(f"Pair: {[text_1, text_2]!r} \nScore: {score}")
        print("-" * 60)
    assert len(outputs) == 2 and all(0.0 <= o.outputs.score <= 1.0 for o in outputs)


if __name__ == "__main__":
    main()
