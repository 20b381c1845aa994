# model: tiny_llama
# expect: beam search ok
"""Beam search, in vLLM's usage pattern (LLM.beam_search with BeamSearchParams)."""
import os

from runner.engine import LLM
from runner.engine.sampling_params import BeamSearchParams

MODEL = os.environ["EXAMPLE_MODEL"]


def main():
    llm = LLM(model=MODEL, max_model_len=256, device="cpu")
    tokenizer = llm.get_tokenizer()
    prompts = ["Hello, my name is",
               {"prompt_token_ids": tokenizer.encode("The capital of France is")}]
    params = BeamSearchParams(beam_width=4, max_tokens=16)
    outputs = llm.beam_search(prompts, params)
    for output in outputs:
        assert len(output.sequences) == 4
        for seq in output.sequences:
            print(f"cum_logprob={seq.cum_logprob:.3f} tokens={len(seq.tokens)} "
                  f"text={seq.text!r}")
        # best first by vLLM's score: cum_logprob / length (a final EOS not counted)
        eos = tokenizer.eos_token_id
        scores = [s.cum_logprob / (len(s.tokens) - (s.tokens[-1] == eos))
                  for s in output.sequences]
        assert scores == sorted(scores, reverse=True), scores
    print("beam search ok")


if __name__ == "__main__":
    main()
