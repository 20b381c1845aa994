# model: tiny_llama
# expect: adapters loaded: 2
# expect: finished 6 requests
"""vLLM's multi-LoRA offline pattern: an LLMEngine from EngineArgs(enable_lora=True, max_loras,
max_lora_rank, max_cpu_loras), requests of (prompt, SamplingParams, LoRARequest or None) added
with LLMEngine.add_request(..., lora_request=...) and stepped until all finish.

vLLM's example downloads an adapter from the hub; this one builds two small PEFT adapters of
the base model offline (peft's get_peft_model + save_pretrained, B made non-zero), so it runs
anywhere."""
import os
import tempfile
from typing import Optional

import torch

from runner.engine import EngineArgs, LLMEngine, RequestOutput, SamplingParams
from runner.engine.lora.request import LoRARequest

MODEL = os.environ["EXAMPLE_MODEL"]


def make_adapter(folder: str, target_modules: list[str], seed: int) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16,
                                                  target_modules=target_modules,
                                                  task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(folder)
    return folder


def create_test_prompts(sql_path: str, chat_path: str
                        ) -> list[tuple[str, SamplingParams, Optional[LoRARequest]]]:
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    return [
        ("A robot may not injure a human being", greedy, None),
        ("To be or not to be,", SamplingParams(temperature=0.8, top_k=5, seed=1,
                                               max_tokens=16), None),
        ("[user] Write a SQL query for the table of users [/user] [assistant]", greedy,
         LoRARequest("sql-lora", 1, sql_path)),
        ("[user] Write a SQL query for the table of orders [/user] [assistant]",
         SamplingParams(n=2, temperature=0.7, seed=2, max_tokens=16),
         LoRARequest("sql-lora", 1, sql_path)),
        ("Hello, how are you today?", greedy, LoRARequest("chat-lora", 2, chat_path)),
        ("Tell me a story about a lighthouse", greedy, LoRARequest("chat-lora", 2, chat_path)),
    ]


def process_requests(engine: LLMEngine,
                     test_prompts: list[tuple[str, SamplingParams, Optional[LoRARequest]]]):
    request_id = 0
    finished = 0
    print("-" * 50)
    while test_prompts or engine.has_unfinished_requests():
        if test_prompts:
            prompt, sampling_params, lora_request = test_prompts.pop(0)
            engine.add_request(str(request_id), prompt, sampling_params,
                               lora_request=lora_request)
            request_id += 1
        request_outputs: list[RequestOutput] = engine.step()
        for request_output in request_outputs:
            if request_output.finished:
                finished += 1
                print(request_output)
                print("-" * 50)
    print(f"finished {finished} requests")


def initialize_engine() -> LLMEngine:
    # max_loras: adapters in one batch; max_lora_rank: the highest rank of any adapter;
    # max_cpu_loras: adapters kept loaded in host memory
    engine_args = EngineArgs(model=MODEL, enable_lora=True, max_loras=1, max_lora_rank=8,
                             max_cpu_loras=2, max_num_seqs=256, device="cpu")
    return LLMEngine.from_engine_args(engine_args)


def main():
    engine = initialize_engine()
    with tempfile.TemporaryDirectory() as tmp:
        sql = make_adapter(os.path.join(tmp, "sql"), ["q_proj", "v_proj"], seed=1)
        chat = make_adapter(os.path.join(tmp, "chat"), ["gate_proj", "up_proj", "down_proj"],
                            seed=2)
        process_requests(engine, create_test_prompts(sql, chat))
    stats = engine.executor.model_runner.lora_manager.stats
    print(f"adapters loaded: {stats['num_adapter_loads']}")


if __name__ == "__main__":
    main()
