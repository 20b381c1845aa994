"""Tests of runner.datasets: the builtin set, jsonl and hf sources, presets, selection, errors.

Sources are files the tests write (jsonl) or datasets they build and save_to_disk (hf); nothing
comes from a hub. Expected prompts, orders and fingerprints are computed here from the spec.
"""
from __future__ import annotations

import hashlib
import json
import random
import types
from dataclasses import dataclass

import pytest

from runner.datasets import (
    SQUAD_PROMPT, DatasetError, DatasetInfo, Example, builtin_names, builtin_path,
    load_examples, parse_source,
)

ROWS = [
    {"id": "a", "title": "T", "context": "The mill opened in 1887 in Dover.",
     "question": "When did the mill open?",
     "answers": {"text": ["1887", "in 1887", "1887"], "answer_start": [19, 16, 19]}},
    {"id": "b", "title": "T", "context": "Its owner was Ada Brook.",
     "question": "Who owned the mill?",
     "answers": {"text": ["Ada Brook"], "answer_start": [14]}},
    {"id": "c", "title": "T", "context": "It made flour.", "question": "What did it make?",
     "answers": {"text": ["flour"], "answer_start": [8]}},
]


def write_jsonl(path, rows, extra_lines=()):
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def canonical_sha(rows):
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- the builtin set ------------------------------------------------------------------------


def test_builtin_file_is_valid_squad():
    path = builtin_path("squad_mini")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 80
    assert len({r["id"] for r in rows}) == 80
    assert len({r["title"] for r in rows}) >= 20  # varied topics
    for r in rows:
        assert list(r) == ["id", "title", "context", "question", "answers"]
        assert set(r["answers"]) == {"text", "answer_start"}
        texts, starts = r["answers"]["text"], r["answers"]["answer_start"]
        assert texts and len(texts) == len(starts)
        assert r["question"].endswith("?")
        for text, start in zip(texts, starts):
            assert r["context"][start:start + len(text)] == text, (r["id"], text)
            assert 1 <= len(text.split()) <= 5, (r["id"], text)


def test_builtin_loads_with_squad_preset():
    examples, info = load_examples({})
    assert "squad_mini" in builtin_names()
    assert info.source == "builtin:squad_mini" and info.metric == "squad"
    assert info.num_rows_total == info.num_examples == len(examples) == 80
    first = examples[0]
    assert first.id == "squad_mini-0001"
    assert first.messages is None
    assert first.prompt == (
        "Answer the question using a short span copied from the passage.\n\n"
        f"Passage: {first.fields['context']}\nQuestion: {first.fields['question']}\nAnswer:")
    for ex in examples:
        assert ex.references == list(dict.fromkeys(ex.fields["answers"]["text"]))
        assert all(ref in ex.fields["context"] for ref in ex.references)


def test_unknown_builtin_lists_known():
    with pytest.raises(ValueError, match="squad_mini"):
        load_examples({"source": "builtin:nope"})


# --- parse_source ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("hf:squad", {"scheme": "hf", "name": "squad", "config": None, "split": None}),
    ("hf:rajpurkar/squad:plain_text",
     {"scheme": "hf", "name": "rajpurkar/squad", "config": "plain_text", "split": None}),
    ("hf:rajpurkar/squad:plain_text:train",
     {"scheme": "hf", "name": "rajpurkar/squad", "config": "plain_text", "split": "train"}),
    ("hf:/tmp/x/saved::test", {"scheme": "hf", "name": "/tmp/x/saved", "config": None,
                               "split": "test"}),
    ("jsonl:data/a:b.jsonl", {"scheme": "jsonl", "path": "data/a:b.jsonl"}),
    ("builtin:squad_mini", {"scheme": "builtin", "name": "squad_mini"}),
])
def test_parse_source(spec, expected):
    assert parse_source(spec) == expected


def test_parse_source_errors():
    with pytest.raises(ValueError, match="known schemes: builtin, jsonl, hf"):
        parse_source("s3:bucket/file")
    with pytest.raises(ValueError, match="no scheme"):
        parse_source("squad")
    with pytest.raises(ValueError, match="too many"):
        parse_source("hf:a:b:c:d")
    with pytest.raises(ValueError, match="names no dataset"):
        parse_source("jsonl:")


# --- jsonl ------------------------------------------------------------------------------------


def test_jsonl_happy_path(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[1]) + "\n",
                    encoding="utf-8")
    examples, info = load_examples({"source": f"jsonl:{path}"})
    assert [e.id for e in examples] == ["a", "b"]
    assert examples[0].references == ["1887", "in 1887"]  # deduplicated, order kept
    assert examples[1].prompt == SQUAD_PROMPT.format(context="Its owner was Ada Brook.",
                                                     question="Who owned the mill?")
    assert examples[0].fields == ROWS[0]
    assert info == DatasetInfo(source=f"jsonl:{path}", num_rows_total=2, num_examples=2,
                               fingerprint=canonical_sha(ROWS[:2]), metric="squad")


def test_jsonl_bad_json_names_file_and_line(tmp_path):
    # line 1 ok, line 2 blank, line 3 broken: the blank line still counts
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n{\"id\": \"x\", \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 3: bad JSON"):
        load_examples({"source": f"jsonl:{path}"})
    write_jsonl(path, ROWS[:1], ['["not", "an", "object"]'])
    with pytest.raises(ValueError, match="line 2: expected a JSON object, got list"):
        load_examples({"source": f"jsonl:{path}"})


def test_jsonl_missing_file(tmp_path):
    path = tmp_path / "absent.jsonl"
    with pytest.raises(FileNotFoundError, match=f"dataset file not found: {path}"):
        load_examples({"source": f"jsonl:{path}"})
    with pytest.raises(ValueError, match="dataset file not found"):
        load_examples({"source": f"jsonl:{path}"})


def test_jsonl_missing_field_for_preset(tmp_path):
    bad = {k: v for k, v in ROWS[2].items() if k != "question"}
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], ROWS[1], bad])
    with pytest.raises(DatasetError) as err:
        load_examples({"source": f"jsonl:{path}", "preset": "squad"})
    msg = str(err.value)
    assert "line 3" in msg and "'question'" in msg and "'context'" in msg  # lists row fields


def test_template_field_missing_in_a_row(tmp_path):
    rows = [{"q": "2+2?", "a": "4"}, {"question": "3+3?", "a": "6"}]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    with pytest.raises(ValueError, match=r"line 2: prompt template uses field 'q'.*'question'"):
        load_examples({"source": f"jsonl:{path}", "template": "Q: {q}\nA:",
                       "reference_field": "a"})


def test_unknown_config_fields_list_available(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"q": "2+2?", "a": "4"}])
    src = f"jsonl:{path}"
    with pytest.raises(ValueError, match=r"prompt_field 'prompt_text'.*\['a', 'q'\]"):
        load_examples({"source": src, "prompt_field": "prompt_text", "reference_field": "a"})
    with pytest.raises(ValueError, match=r"reference_field 'gold'.*\['a', 'q'\]"):
        load_examples({"source": src, "prompt_field": "q", "reference_field": "gold"})
    with pytest.raises(ValueError, match=r"template uses field 'query'.*\['a', 'q'\]"):
        load_examples({"source": src, "template": "{query}", "reference_field": "a"})
    with pytest.raises(ValueError, match="needs dataset.template or dataset.prompt_field"):
        load_examples({"source": src, "reference_field": "a"})


# --- generic form -------------------------------------------------------------------------------


def test_generic_with_template(tmp_path):
    rows = [{"uid": 7, "q": "2+2?", "a": 4, "topic": "math"},
            {"uid": 8, "q": "Capital of France?", "a": ["Paris", "paris"], "topic": "geo"}]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    examples, info = load_examples({
        "source": f"jsonl:{path}", "template": "[{topic}] Q: {q}\nA:",
        "reference_field": "a", "id_field": "uid"})
    assert info.metric == "exact_match"
    assert [e.id for e in examples] == ["7", "8"]
    assert examples[0].prompt == "[math] Q: 2+2?\nA:"
    assert examples[0].references == ["4"]
    assert examples[1].references == ["Paris", "paris"]


def test_generic_defaults_and_row_index_ids(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "Say hi", "answer": "hi"},
                                              {"prompt": "Say yo", "answer": "yo"}])
    examples, _ = load_examples({"source": f"jsonl:{path}", "metric": "squad"})
    assert [(e.id, e.prompt, e.references) for e in examples] == [
        ("0", "Say hi", ["hi"]), ("1", "Say yo", ["yo"])]


def test_chat_messages_and_system_prompt(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    src = f"jsonl:{path}"
    examples, _ = load_examples({"source": src, "chat": True})
    msgs = examples[1].messages
    assert examples[1].prompt is None
    assert [m["role"] for m in msgs] == ["user"]
    assert "Its owner was Ada Brook." in msgs[0]["content"]
    assert "Who owned the mill?" in msgs[0]["content"]
    assert msgs[0]["content"] == (
        "Read the passage and answer the question with just a few words copied from it.\n\n"
        "Passage: Its owner was Ada Brook.\nQuestion: Who owned the mill?\nAnswer:")

    examples, _ = load_examples({"source": src, "chat": True, "system_prompt": "Be brief."})
    assert examples[0].messages[0] == {"role": "system", "content": "Be brief."}
    assert examples[0].messages[1]["role"] == "user"

    examples, _ = load_examples({"source": src, "system_prompt": "Be brief."})
    assert examples[0].prompt.startswith("Be brief.\n\nAnswer the question")

    examples, _ = load_examples({"source": src, "chat": True, "template": "{question}"})
    assert examples[2].messages == [{"role": "user", "content": "What did it make?"}]


# --- selection and fingerprint ----------------------------------------------------------------


def test_limit_and_shuffle_are_deterministic():
    all_ids = [e.id for e in load_examples({})[0]]
    first5 = [e.id for e in load_examples({}, limit=5)[0]]
    assert first5 == all_ids[:5]

    order = list(range(80))
    random.Random(3).shuffle(order)
    cfg = {"shuffle": True, "seed": 3}
    a, info_a = load_examples(cfg, limit=10)
    b, info_b = load_examples(cfg, limit=10)
    assert [e.id for e in a] == [e.id for e in b] == [all_ids[i] for i in order[:10]]
    assert info_a.fingerprint == info_b.fingerprint
    assert info_a.num_rows_total == 80 and info_a.num_examples == 10

    other = [e.id for e in load_examples({"shuffle": True, "seed": 4}, limit=10)[0]]
    assert other != [e.id for e in a]
    with pytest.raises(ValueError, match="limit"):
        load_examples({}, limit=0)


def test_fingerprint_tracks_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    src = f"jsonl:{path}"
    fp = load_examples({"source": src})[1].fingerprint
    assert fp == canonical_sha(ROWS)
    # key order and whitespace in the file do not matter, only the content does
    path.write_text("\n".join(json.dumps(dict(reversed(list(r.items()))), indent=None,
                                         separators=(" , ", " : ")) for r in ROWS),
                    encoding="utf-8")
    assert load_examples({"source": src})[1].fingerprint == fp
    changed = json.loads(json.dumps(ROWS))
    changed[1]["question"] = "Who owned the old mill?"
    write_jsonl(path, changed)
    assert load_examples({"source": src})[1].fingerprint != fp
    # the selection is part of what is hashed
    assert load_examples({"source": src}, limit=2)[1].fingerprint == canonical_sha(changed[:2])


# --- config objects -------------------------------------------------------------------------


def test_accepts_dataclass_namespace_and_omegaconf():
    @dataclass
    class Cfg:
        source: str = "builtin:squad_mini"
        chat: bool = True

    a, _ = load_examples(Cfg(), limit=3)
    b, _ = load_examples(types.SimpleNamespace(chat=True), limit=3)
    assert [e.messages for e in a] == [e.messages for e in b] and len(a) == 3
    omegaconf = pytest.importorskip("omegaconf")
    c, _ = load_examples(omegaconf.OmegaConf.create({"chat": True, "split": None}), limit=3)
    assert [e.messages for e in c] == [e.messages for e in a]
    assert all(isinstance(e, Example) for e in c)


def test_bad_metric_preset_and_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match="known metrics"):
        load_examples({"metric": "bleu"})
    with pytest.raises(ValueError, match="known presets"):
        load_examples({"preset": "mmlu"})
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], ROWS[0]])
    with pytest.raises(ValueError, match="duplicate example id 'a'"):
        load_examples({"source": f"jsonl:{path}"})


# --- hf -------------------------------------------------------------------------------------


@pytest.fixture
def saved_squad(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    single = tmp_path / "single"
    ds.save_to_disk(str(single))
    multi = tmp_path / "multi"
    datasets.DatasetDict({
        "validation": ds, "train": datasets.Dataset.from_list(ROWS[2:]),
    }).save_to_disk(str(multi))
    return single, multi


def test_hf_saved_dataset(saved_squad):
    single, _ = saved_squad
    examples, info = load_examples({"source": f"hf:{single}"})
    assert [e.id for e in examples] == ["a", "b", "c"]
    assert examples[0].references == ["1887", "in 1887"]
    assert examples[2].prompt == SQUAD_PROMPT.format(context="It made flour.",
                                                     question="What did it make?")
    assert info.metric == "squad" and info.num_rows_total == 3
    # same rows as the jsonl path gives the same fingerprint
    assert info.fingerprint == canonical_sha(ROWS)


def test_hf_saved_dataset_dict_splits(saved_squad):
    _, multi = saved_squad
    assert [e.id for e in load_examples({"source": f"hf:{multi}"})[0]] == ["a", "b", "c"]
    assert [e.id for e in load_examples({"source": f"hf:{multi}::train"})[0]] == ["c"]
    assert [e.id for e in load_examples({"source": f"hf:{multi}", "split": "train"})[0]] == ["c"]
    shuffled, _ = load_examples({"source": f"hf:{multi}", "shuffle": True, "seed": 1},
                                limit=2)
    order = [0, 1, 2]
    random.Random(1).shuffle(order)
    assert [e.id for e in shuffled] == [ROWS[i]["id"] for i in order[:2]]
    with pytest.raises(ValueError, match="its splits: validation, train"):
        load_examples({"source": f"hf:{multi}::test"})
    with pytest.raises(ValueError, match="has no configs"):
        load_examples({"source": f"hf:{multi}:plain_text"})
    with pytest.raises(ValueError, match="given twice"):
        load_examples({"source": f"hf:{multi}::train", "split": "validation"})


def test_hf_missing_dataset_offline(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError) as err:
        load_examples({"source": "hf:no-such-owner-xyz/no_such_dataset"})
    msg = str(err.value)
    assert "no-such-owner-xyz/no_such_dataset" in msg
    assert "local cache" in msg and "HF_DATASETS_OFFLINE=1" in msg
