"""Prompts, few-shot examples and continuations equal lm-eval's, request by request.

The reference is lm-eval 0.4.13 itself: its TaskManager loads its own task files (the ones our
presets mirror) on the same local hub copies, and build_all_requests renders every Instance's
(context, continuation) with the same few-shot seed (1234), with and without the chat template
(--apply_chat_template, --fewshot_as_multiturn, --system_instruction). No model is run here."""
from __future__ import annotations

import os

import pytest

from runner.tasks.lm_eval_task import build
from tests.runner.tasks import helpers

pytest.importorskip("lm_eval")


@pytest.fixture(scope="session")
def tokenizer(smollm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(helpers.converted_model_dir(smollm))


def lmeval_requests(include_path, name, *, num_fewshot=None, limit=None, tokenizer=None,
                    multiturn=False, system_instruction=None) -> dict:
    """{task: {(doc_id, idx): Instance.arguments}} from lm-eval's own request building."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[os.fspath(include_path)], include_defaults=False)
    def render(history, add_generation_prompt=True):  # what HFLM.apply_chat_template does
        return tokenizer.apply_chat_template(
            history, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt)

    chat = render if tokenizer is not None else None
    out = {}
    for tname, task in manager.load([name])["tasks"].items():
        if num_fewshot is not None:
            task.set_config("num_fewshot", num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config("num_fewshot", 0)
        task.set_fewshot_seed(1234)
        task.build_all_requests(limit=limit, apply_chat_template=chat is not None,
                                fewshot_as_multiturn=multiturn,
                                system_instruction=system_instruction, chat_template=chat)
        out[tname] = {(i.doc_id, i.idx): i.arguments for i in task.instances}
    return out


def our_requests(node, tokenizer, limit=None) -> dict:
    task = build(helpers.run_config(node, limit=limit, temperature=0.0))
    out: dict = {}
    for doc in task.docs():
        for i, req in enumerate(task.requests(doc, tokenizer, 2048)):
            out.setdefault(doc.task, {})[(doc.index, i)] = req
    return out


def assert_same(ours: dict, theirs: dict, tokenizer):
    assert set(ours) == set(theirs)
    eos = tokenizer.decode([tokenizer.eos_token_id])
    for tname, reqs in theirs.items():
        assert set(ours[tname]) == set(reqs), tname
        for key, args in reqs.items():
            req = ours[tname][key]
            assert req.prompt == args[0], (tname, key, req.prompt, args[0])
            if isinstance(args[1], dict):  # generate_until: (context, generation kwargs)
                until = list(args[1]["until"])
                assert req.meta["until"] == until + ([eos] if eos not in until else [])
            else:  # loglikelihood: (context, continuation)
                assert req.meta["continuation"] == args[1], (tname, key)


CASES = [
    # (preset, lm-eval folder under lm_eval/tasks, name there, extra overrides, lm-eval kwargs)
    ("gsm8k", "gsm8k", "gsm8k", [], {}),
    ("gsm8k", "gsm8k", "gsm8k", ["task.apply_chat_template=true"], {"chat": True}),
    ("gsm8k", "gsm8k", "gsm8k",
     ["task.apply_chat_template=true", "task.fewshot_as_multiturn=true",
      "task.system_instruction='You are careful with numbers.'"],
     {"chat": True, "multiturn": True, "system_instruction": "You are careful with numbers."}),
    ("mmlu_anatomy", "mmlu/default", "mmlu_anatomy", ["task.num_fewshot=5"],
     {"num_fewshot": 5}),
    ("mmlu_anatomy", "mmlu/default", "mmlu_anatomy",
     ["task.num_fewshot=3", "task.apply_chat_template=true", "task.fewshot_as_multiturn=true"],
     {"num_fewshot": 3, "chat": True, "multiturn": True}),
    ("hellaswag", "hellaswag", "hellaswag", ["task.num_fewshot=2"], {"num_fewshot": 2}),
    ("arc_challenge", "arc", "arc_challenge", ["task.num_fewshot=3"], {"num_fewshot": 3}),
    ("arc_easy", "arc", "arc_easy", ["task.num_fewshot=2", "task.apply_chat_template=true"],
     {"num_fewshot": 2, "chat": True}),
]


@pytest.mark.parametrize("preset,folder,name,overrides,kw", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_preset_requests_equal_lmeval(in_hub, tokenizer, preset, folder, name, overrides, kw):
    chat = kw.pop("chat", False)
    theirs = lmeval_requests(helpers.lmeval_tasks_dir() / folder, name,
                             tokenizer=tokenizer if chat else None, **kw)
    ours = our_requests(helpers.preset_node(preset, *overrides), tokenizer)
    assert_same(ours, theirs, tokenizer)


def test_mmlu_group_requests_equal_lmeval(in_hub, tokenizer):
    """All 57 subjects, their order and grouping, the descriptions and first_n shots."""
    theirs = lmeval_requests(helpers.lmeval_tasks_dir() / "mmlu" / "default", "mmlu",
                             num_fewshot=2, limit=1)
    ours = our_requests(helpers.preset_node("mmlu", "task.num_fewshot=2"), tokenizer, limit=1)
    assert len(ours) == 57
    assert_same(ours, theirs, tokenizer)


GEN_PREFIX_TASKS = """\
task: prefixed_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: qa.jsonl
test_split: test
fewshot_split: test
num_fewshot: 2
output_type: multiple_choice
doc_to_text: "Question: {{q}}"
doc_to_choice: "{{options}}"
doc_to_target: gold
gen_prefix: "The answer is"
description: "{{topic}} quiz.\\n\\n"
"""


@pytest.mark.parametrize("chat", [False, True])
def test_gen_prefix_and_templated_description(tmp_path, monkeypatch, tokenizer, chat):
    import json

    rows = [{"q": f"What is item {i}?", "options": [f"a{i}", f"b{i}", f"c{i}"], "gold": i % 3,
             "topic": ["Science", "History"][i % 2]} for i in range(6)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "prefixed_mc.yaml").write_text(GEN_PREFIX_TASKS)
    gen = GEN_PREFIX_TASKS.replace("prefixed_mc", "prefixed_gen").replace(
        "output_type: multiple_choice", "output_type: generate_until").replace(
        "doc_to_target: gold", "doc_to_target: \"{{options[gold]}}\"")
    (tmp_path / "prefixed_gen.yaml").write_text(gen)
    monkeypatch.chdir(tmp_path)
    from runner.tasks.cli_specs import task_node

    for name in ("prefixed_mc", "prefixed_gen"):
        node = task_node(f"lmeval:{tmp_path / (name + '.yaml')}")
        node["apply_chat_template"] = chat
        theirs = lmeval_requests(tmp_path, name, tokenizer=tokenizer if chat else None)
        assert_same(our_requests(node, tokenizer), theirs, tokenizer)
