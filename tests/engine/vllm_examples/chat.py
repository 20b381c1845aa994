# model: tiny_llama
# expect: Generated Outputs:
# expect: conversations: 2
"""vLLM's examples/offline_inference/basic/chat.py pattern: llm.chat() on one conversation,
then a batch of conversations, with a system prompt and a custom chat template."""
import os

from runner.engine import LLM, SamplingParams

MODEL = os.environ["EXAMPLE_MODEL"]


def print_outputs(outputs):
    print("\nGenerated Outputs:\n" + "-" * 80)
    for output in outputs:
        prompt = output.prompt
        generated_text = output.outputs[0].text
        print(f"Prompt: {prompt!r}\n")
        print(f"Generated text: {generated_text!r}")
        print("-" * 80)


def main():
    llm = LLM(model=MODEL, device="cpu")
    sampling_params = SamplingParams(max_tokens=12, temperature=0.0)

    conversation = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hello! How can I assist you today?"},
        {"role": "user", "content": "Write an essay about the importance of higher education."},
    ]
    outputs = llm.chat(conversation, sampling_params, use_tqdm=False)
    print_outputs(outputs)

    # You can run batch inference with llm.chat API
    conversations = [conversation for _ in range(2)]
    # We turn on tqdm progress bar to verify it's indeed running batch inference
    outputs = llm.chat(conversations, sampling_params, use_tqdm=True)
    print_outputs(outputs)
    print(f"conversations: {len(outputs)}")
    assert outputs[0].outputs[0].text == outputs[1].outputs[0].text   # greedy, same input

    # A chat template can be optionally supplied.
    chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                     "{% if add_generation_prompt %}assistant: {% endif %}")
    outputs = llm.chat(conversations, sampling_params, use_tqdm=False,
                       chat_template=chat_template)
    print_outputs(outputs)
    assert outputs[0].prompt.startswith("system: You are a helpful assistant\n")


if __name__ == "__main__":
    main()
