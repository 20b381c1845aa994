"""Greedy agreement of quantization='fp8' with the unquantized model, on a briefly trained model.

    python scripts/fp8_agreement.py [--steps 400] [--device cuda] [--out agreement.json]

Random weights make a poor test of a quantization scheme (their logits are near-ties that any
rounding flips), so this trains a small Llama (4 layers, hidden 256) for a few hundred steps on
the SQuAD contexts the repo ships (runner/data/squad_mini.jsonl) with a BPE tokenizer trained on
the same text, saves it, and decodes the same prompts greedily with LLM(folder) and with
LLM(folder, quantization='fp8'). Reported: the share of prompts whose continuations are equal,
the mean length of the common prefix, and the share of positions that agree. The model runs in
bfloat16 on CUDA (float32 on CPU, where the fp8 path is the torch reference).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

DATA = os.path.join(os.path.dirname(__file__), "..", "runner", "data", "squad_mini.jsonl")


def corpus() -> list[str]:
    with open(DATA) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    texts = {r.get("context") or r.get("text") or "" for r in rows}
    return sorted(t for t in texts if t)


def build_tokenizer(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>")


def train(folder: str, steps: int, device: str, seed: int) -> list[list[int]]:
    """Train and save the model; returns held-out prompt token ids."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    texts = corpus()
    tok = build_tokenizer(texts, 2048)
    ids = [tok(t)["input_ids"] for t in texts]
    held_out, train_ids = ids[:16], ids[16:]
    stream = torch.tensor([i for seq in train_ids for i in seq + [tok.eos_token_id]])
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    seq, batch = 128, 16
    t0 = time.time()
    for step in range(steps):
        starts = torch.randint(0, len(stream) - seq - 1, (batch,))
        x = torch.stack([stream[s:s + seq] for s in starts]).to(device)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    prompts = [seq_ids[:24] for seq_ids in held_out if len(seq_ids) > 24]
    prompts += [seq_ids[40:64] for seq_ids in held_out if len(seq_ids) > 64]
    return prompts


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from runner.engine import LLM, SamplingParams
    folder = tempfile.mkdtemp(prefix="fp8-agreement-")
    prompts = train(folder, args.steps, args.device, args.seed)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    runs = {}
    for name, quant in (("unquantized", None), ("fp8", "fp8")):
        llm = LLM(folder, dtype=dtype, quantization=quant, device=args.device,
                  max_model_len=256, gpu_memory_utilization=0.3)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        runs[name] = [o.outputs[0].token_ids for o in outs]
        llm.llm_engine.shutdown()
        del llm
    prefix = []
    for a, b in zip(runs["unquantized"], runs["fp8"]):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        prefix.append(n)
    total = len(prompts) * args.max_tokens
    result = {
        "prompts": len(prompts), "max_tokens": args.max_tokens, "train_steps": args.steps,
        "dtype": dtype, "device": args.device,
        "identical_continuations": sum(n == args.max_tokens for n in prefix) / len(prompts),
        "mean_common_prefix_tokens": sum(prefix) / len(prompts),
        "position_agreement": sum(x == y for a, b in zip(runs["unquantized"], runs["fp8"])
                                  for x, y in zip(a, b)) / total,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
