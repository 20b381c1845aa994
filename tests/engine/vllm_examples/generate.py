# model: tiny_llama
# expect: Generated Outputs:
# expect: max_tokens=8 temperature=0.0
"""vLLM's examples/offline_inference/basic/generate.py pattern: FlexibleArgumentParser,
EngineArgs.add_cli_args, a sampling argument group, `LLM(**vars(args))` with every engine
argument the parser made, and llm.get_default_sampling_params() updated from the arguments.

The command line is given as vLLM's users give it, dashes and underscores mixed."""
import os

from runner.engine import LLM, EngineArgs
from runner.engine.utils.argparse_utils import FlexibleArgumentParser

MODEL = os.environ["EXAMPLE_MODEL"]


def create_parser():
    parser = FlexibleArgumentParser()
    # Add engine args
    EngineArgs.add_cli_args(parser)
    parser.set_defaults(model=MODEL)
    # Add sampling params
    sampling_group = parser.add_argument_group("Sampling parameters")
    sampling_group.add_argument("--max-tokens", type=int)
    sampling_group.add_argument("--temperature", type=float)
    sampling_group.add_argument("--top-p", type=float)
    sampling_group.add_argument("--top-k", type=int)
    return parser


def main(args: dict):
    # Pop arguments not used by LLM
    max_tokens = args.pop("max_tokens")
    temperature = args.pop("temperature")
    top_p = args.pop("top_p")
    top_k = args.pop("top_k")

    # Create an LLM
    llm = LLM(**args)

    # Create a sampling params object
    sampling_params = llm.get_default_sampling_params()
    if max_tokens is not None:
        sampling_params.max_tokens = max_tokens
    if temperature is not None:
        sampling_params.temperature = temperature
    if top_p is not None:
        sampling_params.top_p = top_p
    if top_k is not None:
        sampling_params.top_k = top_k

    # Generate texts from the prompts. The output is a list of RequestOutput
    # objects that contain the prompt, generated text, and other information.
    prompts = [
        "Hello, my name is",
        "The president of the United States is",
        "The capital of France is",
        "The future of AI is",
    ]
    outputs = llm.generate(prompts, sampling_params)
    # Print the outputs.
    print("-" * 50)
    for output in outputs:
        prompt = output.prompt
        generated_text = output.outputs[0].text
        print(f"Prompt: {prompt!r}\nGenerated text: {generated_text!r}")
        print("-" * 50)
    print("Generated Outputs:", len(outputs))
    print(f"max_tokens={sampling_params.max_tokens} temperature={sampling_params.temperature}")
    assert all(len(o.outputs[0].token_ids) <= 8 for o in outputs)


if __name__ == "__main__":
    parser = create_parser()
    args: dict = vars(parser.parse_args([
        "--device", "cpu", "--max-model-len", "256", "--max_num_seqs", "8",
        "--enforce-eager", "--seed=3", "--max-tokens", "8", "--temperature", "0"]))
    assert args["max_model_len"] == 256 and args["max_num_seqs"] == 8, args
    assert args["enforce_eager"] is True and args["seed"] == 3, args
    main(args)
