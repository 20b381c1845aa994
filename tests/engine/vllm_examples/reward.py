# model: tiny_llama_classifier
# expect: Generated Outputs:
# expect: Reward: [
"""vLLM's reward pattern (a sequence reward model; vLLM 0.10's LLM.reward, removed later in
favour of encode): llm.reward(prompts), print each prompt's raw reward."""
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
    # Create an LLM. You should pass a reward (sequence classification) model here.
    llm = LLM(model=MODEL, enforce_eager=True, device="cpu")
    # Generate rewards. The output is a list of PoolingRequestOutputs.
    outputs = llm.reward(prompts)
    # Print the outputs.
    print("\nGenerated Outputs:\n" + "-" * 60)
    for prompt, output in zip(prompts, outputs):
        rewards = output.outputs.data.tolist()
        print(f"Prompt: {prompt!r} \nReward: {rewards} (size={len(rewards)})")
        print("-" * 60)
    # the same scores through the pooling API directly: classify without the activation
    from runner.engine.pooling_params import PoolingParams
    raw = llm.encode(prompts, PoolingParams(use_activation=False), pooling_task="classify")
    assert [o.outputs.data.tolist() for o in raw] == [o.outputs.data.tolist() for o in outputs]


if __name__ == "__main__":
    main()
