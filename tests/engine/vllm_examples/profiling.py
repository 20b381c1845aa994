# model: tiny_llama
# expect: Traces written:
"""vLLM's examples/offline_inference/simple_profiling.py pattern: LLM(profiler_config=...) with
the torch profiler and a trace folder, start_profile(), generate, stop_profile(), and the
traces are in the folder."""
import os
import time

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
sampling_params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=8)


def main():
    trace_dir = os.path.abspath("./vllm_profile")
    # Create an LLM with the torch profiler enabled.
    llm = LLM(model=MODEL, tensor_parallel_size=1, device="cpu",
              profiler_config={"profiler": "torch", "torch_profiler_dir": trace_dir})
    llm.start_profile()
    # Generate texts from the prompts. The output is a list of RequestOutput objects
    # that contain the prompt, generated text, and other information.
    outputs = llm.generate(prompts, sampling_params)
    llm.stop_profile()
    # Print the outputs.
    print("-" * 50)
    for output in outputs:
        prompt = output.prompt
        generated_text = output.outputs[0].text
        print(f"Prompt: {prompt!r}\nGenerated text: {generated_text!r}")
        print("-" * 50)
    # Add a buffer to wait for profiler in the background process
    # (in case MP is on) to finish writing profiling output.
    time.sleep(1)
    traces = sorted(os.listdir(trace_dir))
    print(f"Traces written: {traces}")
    assert traces and all(t.endswith(".pt.trace.json.gz") for t in traces)


if __name__ == "__main__":
    main()
