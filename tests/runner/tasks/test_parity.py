"""Parity with lm-eval (item 6): the same task, data and SmolLM2-135M weights (float32, CPU),
scored by our engine through the task layer and by `lm_eval --model hf` (its Python API, batch
size 1, max_length = our max_model_len - 2, the lengths at which its windows and truncation
equal the vLLM-style ones the runner uses). acc / acc_norm / perplexities within 1e-4 relative,
exact_match equal, per item and per task, stderrs too."""
from __future__ import annotations

import math

import pytest

from runner.tasks.lm_eval_task import build
from tests.runner.tasks import helpers
from tests.runner.tasks.conftest import ENGINE_MAX_MODEL_LEN

pytestmark = [pytest.mark.timeout(1800)]
REL = 1e-4


def close(a, b, rel=REL):
    if a is None or b in (None, "N/A"):
        return a is None and b in (None, "N/A")
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def ours(node, engine, max_model_len=ENGINE_MAX_MODEL_LEN, **kw):
    task = build(helpers.run_config(node, **kw))
    records = helpers.run_on_engine(task, engine, max_model_len)
    return task, records, task.aggregate(records)


def compare_task(mine: dict, theirs: dict, keys):
    for key in keys:
        metric, flt = key.split(",")
        assert close(mine["metrics"][key]["value"], theirs[key]), (key, mine["metrics"][key],
                                                                   theirs[key])
        assert close(mine["metrics"][key]["stderr"], theirs[f"{metric}_stderr,{flt}"]), key


def test_multiple_choice_arc_easy(in_hub, engine, hflm):
    node = helpers.preset_node("arc_easy")
    _, records, agg = ours(node, engine)
    ref = helpers.run_lmeval(hflm, ["arc_easy"], helpers.lmeval_tasks_dir() / "arc")
    compare_task(agg["results"]["arc_easy"], ref["results"]["arc_easy"],
                 ["acc,none", "acc_norm,none"])
    for rec, sample in zip(records, ref["samples"]["arc_easy"]):
        assert rec["prompt"] == sample["arguments"][0][0]
        for choice, resp in zip(rec["choices"], sample["resps"]):
            ll, greedy = resp[0]
            assert close(choice["loglikelihood"], ll), (choice, resp)
            assert choice["is_greedy"] == greedy


def test_loglikelihood_rolling_wikitext(in_hub, engine, hflm):
    # A small max_model_len (64) puts each page over several rolling windows.
    node = helpers.preset_node("wikitext")
    _, records, agg = ours(node, engine, max_model_len=64)
    assert all(r["windows"] > 1 for r in records)
    hflm._max_length = 62
    try:
        ref = helpers.run_lmeval(hflm, ["wikitext"], helpers.lmeval_tasks_dir() / "wikitext")
    finally:
        hflm._max_length = ENGINE_MAX_MODEL_LEN - 2
    compare_task(agg["results"]["wikitext"], ref["results"]["wikitext"],
                 ["word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"])
    for rec, sample in zip(records, ref["samples"]["wikitext"]):
        assert close(rec["loglikelihood"], sample["resps"][0][0])


def test_generate_until_gsm8k(in_hub, engine, hflm):
    # sampling.max_tokens plays lm-eval's --gen_kwargs max_gen_toks
    node = helpers.preset_node("gsm8k")
    _, records, agg = ours(node, engine, temperature=0.0, max_tokens=32, limit=2)
    ref = helpers.run_lmeval(hflm, ["gsm8k"], helpers.lmeval_tasks_dir() / "gsm8k", limit=2,
                             gen_kwargs={"max_gen_toks": 32})
    theirs = ref["results"]["gsm8k"]
    for key in ("exact_match,strict-match", "exact_match,flexible-extract"):
        assert agg["results"]["gsm8k"]["metrics"][key]["value"] == theirs[key], key
        assert close(agg["results"]["gsm8k"]["metrics"][key]["stderr"],
                     theirs[key.replace(",", "_stderr,")])
    by_filter = {}
    for s in ref["samples"]["gsm8k"]:
        by_filter.setdefault(s["filter"], []).append(s)
    for flt, samples in by_filter.items():
        for rec, sample in zip(records, samples):
            assert rec["prompt"] == sample["arguments"][0][0]
            assert rec["raw"] == sample["resps"][0], (rec["raw"], sample["resps"])
            assert rec["filtered"][flt] == sample["filtered_resps"][0]
            assert rec["params"]["max_tokens"] == 32 and rec["params"]["temperature"] == 0.0


QUIZ_A = [("Which is a color?", ["table", "purple", "river", "seven"], 1),
          ("Which is a number?", ["nine", "chair", "cloud", "shoe"], 0),
          ("Which is an animal?", ["spoon", "window", "horse", "paper"], 2),
          ("Which is a drink?", ["brick", "tea", "lamp", "sock"], 1),
          ("Which is a fruit?", ["pear", "hammer", "coat", "road"], 0),
          ("Which is a tool?", ["milk", "rain", "bread", "saw"], 3),
          ("Which is a planet?", ["Venus", "Paris", "Nile", "Oak"], 0),
          ("Which is a sport?", ["soup", "tennis", "glass", "violet"], 1)]
QUIZ_B = [("Is ice cold?", 0), ("Is fire wet?", 1), ("Do birds have wings?", 0),
          ("Can fish ride bicycles?", 1), ("Is the sea salty?", 0), ("Is a stone alive?", 1)]
CLOZE = ["The cat sat on the warm mat", "She poured the tea into a small cup",
         "The children ran across the green field", "He opened the door and stepped outside",
         "Rain fell softly on the old roof", "We watched the sun set over the hills",
         "The baker took fresh bread out of the oven", "A dog barked loudly at the mailman"]


def write_user_suite(folder):
    """A user's lm-eval task folder: a shared base (include), two quizzes behind a tag, a cloze
    task and a group over them; the data as jsonl next to it, found from the working folder."""
    import json

    def jsonl(name, rows):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    jsonl("quiz_a.jsonl", [{"question": q, "options": o, "answer": a} for q, o, a in QUIZ_A])
    jsonl("quiz_b.jsonl", [{"question": q, "label": y} for q, y in QUIZ_B])
    jsonl("cloze.jsonl", [{"text": t} for t in CLOZE])
    (folder / "_quiz_base.yaml").write_text(
        'dataset_path: json\noutput_type: multiple_choice\ntest_split: test\n'
        'doc_to_text: "Q: {{question}}\\nA:"\nmetric_list:\n  - metric: acc\n'
        '  - metric: acc_norm\nmetadata:\n  version: 1.0\n')
    (folder / "quiz_a.yaml").write_text(
        'include: _quiz_base.yaml\ntask: quiz_a\ntag: quizzes\ndataset_kwargs:\n'
        '  data_files:\n    test: quiz_a.jsonl\ndoc_to_choice: "{{options}}"\n'
        'doc_to_target: answer\ndescription: "Pick the right word.\\n\\n"\nnum_fewshot: 2\n'
        'fewshot_split: test\n')
    (folder / "quiz_b.yaml").write_text(
        'include: _quiz_base.yaml\ntask: quiz_b\ntag: [quizzes]\ndataset_kwargs:\n'
        '  data_files:\n    test: quiz_b.jsonl\ndoc_to_choice: {a: "yes", b: "no"}\n'
        'doc_to_target: "{{label}}"\n')
    (folder / "cloze.yaml").write_text(
        'task: cloze\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: cloze.jsonl\n'
        'test_split: test\noutput_type: loglikelihood\n'
        'doc_to_text: "{{text.split(\' \')[:-1] | join(\' \')}}"\n'
        'doc_to_target: " {{text.split(\' \')[-1]}}"\nmetric_list:\n  - metric: perplexity\n'
        '  - metric: acc\n')
    (folder / "suite.yaml").write_text(
        'group: mini_suite\ntask:\n  - quizzes\n  - cloze\naggregate_metric_list:\n'
        '  - metric: acc\n    weight_by_size: true\nmetadata:\n  version: 1\n')
    return folder / "suite.yaml"


def test_user_group_runs_unchanged(tmp_path, monkeypatch, engine, hflm):
    """A user's lm-eval group (include, tag, loglikelihood + multiple_choice, jsonl data)
    through `task=lmeval:suite.yaml`: every subtask's numbers and the group's weighted acc."""
    from runner.tasks.cli_specs import task_node

    suite = write_user_suite(tmp_path)
    monkeypatch.chdir(tmp_path)
    node = task_node(f"lmeval:{suite}")
    assert list(node["subtasks"]) == ["quiz_a", "quiz_b", "cloze"]
    _, records, agg = ours(node, engine)
    ref = helpers.run_lmeval(hflm, ["mini_suite"], tmp_path)
    for name, keys in (("quiz_a", ["acc,none", "acc_norm,none"]),
                       ("quiz_b", ["acc,none", "acc_norm,none"]),
                       ("cloze", ["perplexity,none", "acc,none"])):
        compare_task(agg["results"][name], ref["results"][name], keys)
        assert agg["results"][name]["num_items"] == ref["results"][name]["sample_len"]
    group = agg["groups"]["mini_suite"]["metrics"]["acc,none"]
    assert close(group["value"], ref["results"]["mini_suite"]["acc,none"])
    assert close(group["stderr"], ref["results"]["mini_suite"]["acc_stderr,none"])
    assert agg["scores"] == {"acc,none": group["value"]}
    prompts = {(s["doc_id"], n): s["arguments"][0][0] for n in ("quiz_a", "quiz_b", "cloze")
               for s in ref["samples"][n]}
    for rec in records:
        assert rec["prompt"] == prompts[(rec["index"], rec["task"])]
