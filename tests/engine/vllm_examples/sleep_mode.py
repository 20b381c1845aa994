# model: tiny_llama
# expect: outputs after wake_up equal outputs before sleep
"""vLLM's sleep mode pattern (tests of LLM.sleep / wake_up, docs/features/sleep_mode.md):
generate, sleep(level=1), wake_up(), generate again with the same greedy outputs; then
level 2 with weights woken, reloaded through collective_rpc("reload_weights"), then the KV
cache."""
import os

from runner.engine import LLM, SamplingParams

MODEL = os.environ["EXAMPLE_MODEL"]

prompts = ["How are you?", "The capital of France is"]
sampling_params = SamplingParams(temperature=0, max_tokens=10)


def main():
    llm = LLM(MODEL, enable_sleep_mode=True, device="cpu")
    output = llm.generate(prompts, sampling_params)

    # Put the engine to deep sleep: weights offloaded to CPU memory, KV cache discarded.
    llm.sleep(level=1)
    llm.wake_up()
    output2 = llm.generate(prompts, sampling_params)
    assert [o.outputs[0].text for o in output] == [o.outputs[0].text for o in output2]

    # Level 2: the weights are discarded too; wake them up, reload them, then the KV cache.
    llm.sleep(level=2)
    llm.wake_up(tags=["weights"])
    llm.collective_rpc("reload_weights")
    llm.wake_up(tags=["kv_cache"])
    output3 = llm.generate(prompts, sampling_params)
    assert [o.outputs[0].text for o in output] == [o.outputs[0].text for o in output3]
    for o in output3:
        print(f"Prompt: {o.prompt!r}\nGenerated text: {o.outputs[0].text!r}")
    print("outputs after wake_up equal outputs before sleep")


if __name__ == "__main__":
    main()
