"""Profile decode steps of a real-shape model on the GPU: which kernels take the time?"""
import sys, torch
from runner.engine import LLM, SamplingParams
from runner.engine_bench import model_folder, random_prompts
model, seqs, ctx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = LLM(model_folder(model), load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True,
          enforce_eager=True, max_num_seqs=seqs, max_num_batched_tokens=16384)
eng = llm.llm_engine
sp = SamplingParams(temperature=1.0, max_tokens=64, ignore_eos=True, detokenize=False)
for i, p in enumerate(random_prompts(seqs, ctx, 32000, 0)):
    eng.add_request(str(i), p, sp)
while any(s.num_output_tokens == 0 for s in eng.scheduler.running + list(eng.scheduler.waiting)):
    eng.step()
for _ in range(3):
    eng.step()
torch.cuda.synchronize()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
    for _ in range(5):
        eng.step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
