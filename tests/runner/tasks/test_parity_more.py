"""More lm-eval parity on SmolLM2-135M (see test_parity.py for the method): the MMLU group (57
subjects, category groups, size-weighted accuracy), hellaswag (our native preprocessing against
lm-eval's own utils.py), arc_challenge, the chat template (multiturn few-shot, a system
instruction) for generation and multiple choice, and the builtin offline tasks."""
from __future__ import annotations

import json

import pytest

from tests.runner.tasks import helpers
from tests.runner.tasks.test_parity import close, compare_task, ours

# About 15 minutes on 2 shared CPU cores (MMLU's 57 subjects alone take most of it); the
# default suite keeps test_parity.py, one of each output type and a group.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_mmlu_group(in_hub, engine, hflm):
    node = helpers.preset_node("mmlu", "task.num_fewshot=1")
    _, _, agg = ours(node, engine)
    ref = helpers.run_lmeval(hflm, ["mmlu"], helpers.lmeval_tasks_dir() / "mmlu" / "default",
                             num_fewshot=1)
    assert len(agg["results"]) == 57
    for name, result in agg["results"].items():
        compare_task(result, ref["results"][name], ["acc,none"])
    for group in ("mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities",
                  "mmlu"):
        mine = agg["groups"][group]["metrics"]["acc,none"]
        assert close(mine["value"], ref["results"][group]["acc,none"]), group
        assert close(mine["stderr"], ref["results"][group]["acc_stderr,none"]), group
        assert agg["groups"][group]["alias"] == ref["results"][group]["alias"].strip()


@pytest.mark.parametrize("preset,folder,keys", [
    ("hellaswag", "hellaswag", ["acc,none", "acc_norm,none"]),
    ("arc_challenge", "arc", ["acc,none", "acc_norm,none"]),
])
def test_multiple_choice_presets(in_hub, engine, hflm, preset, folder, keys):
    _, _, agg = ours(helpers.preset_node(preset, "task.num_fewshot=2"), engine)
    ref = helpers.run_lmeval(hflm, [preset], helpers.lmeval_tasks_dir() / folder,
                             num_fewshot=2)
    compare_task(agg["results"][preset], ref["results"][preset], keys)


def test_chat_template_generation_and_choices(in_hub, engine, hflm):
    overrides = ["task.apply_chat_template=true", "task.fewshot_as_multiturn=true",
                 "task.system_instruction='Answer briefly.'"]
    _, records, agg = ours(helpers.preset_node("gsm8k", "task.num_fewshot=2", *overrides),
                           engine, temperature=0.0, max_tokens=24, limit=3)
    ref = helpers.run_lmeval(hflm, ["gsm8k"], helpers.lmeval_tasks_dir() / "gsm8k", limit=3,
                             num_fewshot=2, gen_kwargs={"max_gen_toks": 24},
                             apply_chat_template=True, fewshot_as_multiturn=True,
                             system_instruction="Answer briefly.")
    strict = [s for s in ref["samples"]["gsm8k"] if s["filter"] == "strict-match"]
    for rec, sample in zip(records, strict):
        assert rec["prompt"] == sample["arguments"][0][0]
        assert rec["prompt"].startswith("<|im_start|>system\nAnswer briefly.")
        assert rec["raw"] == sample["resps"][0]
    for key in ("exact_match,strict-match", "exact_match,flexible-extract"):
        assert agg["results"]["gsm8k"]["metrics"][key]["value"] == ref["results"]["gsm8k"][key]
    _, _, agg = ours(helpers.preset_node("arc_easy", "task.num_fewshot=2", *overrides), engine)
    ref = helpers.run_lmeval(hflm, ["arc_easy"], helpers.lmeval_tasks_dir() / "arc",
                             num_fewshot=2, apply_chat_template=True, fewshot_as_multiturn=True,
                             system_instruction="Answer briefly.")
    compare_task(agg["results"]["arc_easy"], ref["results"]["arc_easy"],
                 ["acc,none", "acc_norm,none"])


def _lmeval_copy(preset: str, folder) -> None:
    """The builtin preset as a plain lm-eval file (absolute data paths instead of builtin:)."""
    import yaml

    from runner.tasks.data import resolve_data_files

    def drop_none(value):
        if isinstance(value, dict):
            return {k: drop_none(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [drop_none(v) for v in value]
        return value

    cfg = drop_none(helpers.preset_node(preset))
    cfg.pop("subtasks")
    cfg["dataset_kwargs"]["data_files"] = resolve_data_files(
        cfg["dataset_kwargs"]["data_files"])
    (folder / f"{preset}.yaml").write_text(yaml.safe_dump(cfg))


@pytest.mark.parametrize("preset,keys,max_model_len", [
    ("mc_mini", ["acc,none", "acc_norm,none"], 2048),
    ("arith_mini", ["exact_match,number"], 2048),
    ("paragraphs_mini", ["word_perplexity,none", "byte_perplexity,none",
                         "bits_per_byte,none"], 48),
])
def test_builtin_tasks(tmp_path, engine, hflm, preset, keys, max_model_len):
    _lmeval_copy(preset, tmp_path)
    _, _, agg = ours(helpers.preset_node(preset), engine, max_model_len=max_model_len,
                     temperature=0.0)
    hflm._max_length = max_model_len - 2
    try:
        ref = helpers.run_lmeval(hflm, [preset], tmp_path)
    finally:
        hflm._max_length = 2046
    mine, theirs = agg["results"][preset], ref["results"][preset]
    if preset == "arith_mini":
        assert mine["metrics"][keys[0]]["value"] == theirs[keys[0]]
    else:
        compare_task(mine, theirs, keys)
    print(json.dumps({preset: {k: [mine["metrics"][k]["value"], theirs[k]] for k in keys}}))


def test_squad_preset_scores_by_hand(in_hub, engine):
    """lm-eval ships no SQuAD v1.1 task: the preset's scores are checked against the official
    SQuAD normalization applied by hand to the model's own answers."""
    import re
    import string
    from collections import Counter

    def norm(s):
        s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
        return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())

    def f1(pred, gold):
        p, g = norm(pred).split(), norm(gold).split()
        common = sum((Counter(p) & Counter(g)).values())
        return 0.0 if not common else 2 * common / (len(p) + len(g))

    _, records, agg = ours(helpers.preset_node("squad"), engine, temperature=0.0)
    assert len(records) == 3
    for rec in records:
        answer = rec["filtered"]["none"]
        assert rec["prompt"].startswith("Title: ") and rec["prompt"].endswith("\n\nAnswer:")
        assert rec["scores"]["f1,none"] == pytest.approx(max(f1(answer, g)
                                                             for g in rec["target"]))
        assert rec["scores"]["exact_match,none"] == float(
            any(norm(answer) == norm(g) for g in rec["target"]))
    metrics = agg["results"]["squad"]["metrics"]
    assert metrics["f1,none"]["n"] == 3 and metrics["f1,none"]["stderr"] is not None


def test_truncated_contexts(in_hub, engine, hflm):
    """Contexts longer than the model window are cut from the left like lm-eval's (a 2-shot
    arc_easy in a 40-token window)."""
    node = helpers.preset_node("arc_easy", "task.num_fewshot=2")
    _, records, agg = ours(node, engine, max_model_len=40)
    assert all(len(r["prompt"]) > 100 for r in records)  # far more than 40 tokens of text
    hflm._max_length = 38
    try:
        ref = helpers.run_lmeval(hflm, ["arc_easy"], helpers.lmeval_tasks_dir() / "arc",
                                 num_fewshot=2)
    finally:
        hflm._max_length = 2046
    compare_task(agg["results"]["arc_easy"], ref["results"]["arc_easy"],
                 ["acc,none", "acc_norm,none"])
    for rec, sample in zip(records, ref["samples"]["arc_easy"]):
        for choice, resp in zip(rec["choices"], sample["resps"]):
            assert close(choice["loglikelihood"], resp[0][0])
