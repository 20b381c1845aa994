"""Profile beam-search decode steps (Llama-3-8B shape, 100 prompts, width 4) on the GPU."""
import torch
from runner.engine import LLM, SamplingParams, BeamSearchParams
from runner.engine_bench import model_folder, random_prompts
llm = LLM(model_folder("llama3_8b"), load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True,
          max_num_seqs=512, max_num_batched_tokens=16384)
eng = llm.llm_engine
sp = SamplingParams(n=4, temperature=1.0, max_tokens=256, ignore_eos=True)
for i, p in enumerate(random_prompts(100, 256, 32000, 0)):
    eng.add_request(str(i), p, sp, beam_params=BeamSearchParams(beam_width=4, max_tokens=256,
                                                                 ignore_eos=True))
for _ in range(20):
    eng.step()
torch.cuda.synchronize()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
    for _ in range(5):
        eng.step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=50))
