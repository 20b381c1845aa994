"""Bad data, each a one-line error naming the file (and line) and the fix: unreadable, non-UTF-8,
malformed or too deeply nested rows, missing splits and fields, an empty choice list, a hub
dataset that is not cached offline; builtin: data files; a regex that never matches."""
from __future__ import annotations

import json

import pytest

from runner.tasks.data import MAX_ROW_NESTING, TaskDataError, check_data_file
from runner.tasks.lm_eval_task import build
from runner.tasks.templates import TemplateFieldError
from tests.runner.tasks import helpers


def node_for(path, **extra):
    return {"task": "t", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path)}}, "test_split": "test",
            "output_type": "multiple_choice", "doc_to_text": "{{q}}",
            "doc_to_choice": "{{options}}", "doc_to_target": "gold", **extra}


def rows_file(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"q": "Pick a", "options": ["a", "b"], "gold": 0},
        {"q": "Pick b", "options": ["a", "b"], "gold": 1}]


def one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def test_non_utf8_row_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"q": "ok", "options": ["a"], "gold": 0}\n{"q": "caf\xe9"}\n')
    with pytest.raises(TaskDataError) as e:
        build(helpers.run_config(node_for(path))).docs()
    assert f"{path}:2: not UTF-8 (byte 0xe9)" in one_line(e) and "re-encode" in one_line(e)


def test_malformed_row_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"q": "ok", "options": ["a"], "gold": 0}\n\n{"q": "x",, "gold": 1}\n')
    with pytest.raises(TaskDataError) as e:
        build(helpers.run_config(node_for(path))).docs()
    assert f"{path}:3: malformed JSON" in one_line(e)


def test_nesting_limit_is_where_datasets_stops(tmp_path):
    """The row depth we reject is the first one datasets (Arrow) cannot read."""
    import datasets

    def nested(depth):  # a row (1 level) holding depth - 1 nested lists
        return {"x": json.loads("[" * (depth - 1) + "1" + "]" * (depth - 1))}

    ok = rows_file(tmp_path, [nested(MAX_ROW_NESTING)], "ok.jsonl")
    check_data_file(str(ok), "json")
    datasets.load_dataset("json", data_files={"test": str(ok)})
    deep = rows_file(tmp_path, [nested(MAX_ROW_NESTING + 1)], "deep.jsonl")
    with pytest.raises(Exception):
        datasets.load_dataset("json", data_files={"test": str(deep)})
    with pytest.raises(TaskDataError) as e:
        check_data_file(str(deep), "json")
    assert f"{deep}:1: the row is nested {MAX_ROW_NESTING + 1} levels deep" in one_line(e)
    assert "flatten" in one_line(e)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(TaskDataError) as e:
        build(helpers.run_config(node_for(tmp_path / "nope.jsonl"))).docs()
    assert "data file not found" in one_line(e) and "nope.jsonl" in one_line(e)
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(TaskDataError, match="dir.jsonl: is a directory, not a data file; name"):
        check_data_file(str(tmp_path / "dir.jsonl"), "json")
    bad_csv = tmp_path / "d.csv"
    bad_csv.write_text('q,gold\n"a, b",1\nhello, world,1\n')
    with pytest.raises(TaskDataError) as e:
        check_data_file(str(bad_csv), "csv")
    assert f"{bad_csv}:3: malformed CSV row (3 fields, the header has 2)" in one_line(e)


def test_missing_splits_name_the_key_and_the_splits(tmp_path):
    path = rows_file(tmp_path, ROWS)
    with pytest.raises(TaskDataError) as e:
        build(helpers.run_config(node_for(path, fewshot_split="dev", num_fewshot=1))).docs()
    assert "fewshot_split 'dev' is not a split of the dataset; available: test" in one_line(e)
    with pytest.raises(TaskDataError, match="neither test_split nor validation_split"):
        build(helpers.run_config({**node_for(path), "test_split": None})).docs()


def test_missing_field_and_empty_choices_name_the_doc(tmp_path):
    path = rows_file(tmp_path, ROWS)
    # found when the docs are listed, before any request is built
    task = build(helpers.run_config(node_for(path, doc_to_text="{{question}}")))
    with pytest.raises(TemplateFieldError) as e:
        task.docs()
    msg = one_line(e)
    assert "doc_to_text" in msg and "'question' is undefined" in msg and "doc t/0" in msg
    empty = rows_file(tmp_path, ROWS + [{"q": "x", "options": [], "gold": 0}], "e.jsonl")
    task = build(helpers.run_config(node_for(empty)))
    with pytest.raises(TemplateFieldError) as e:
        task.docs()
    assert "doc_to_choice gave an empty choice list for doc t/2" in one_line(e)


def test_too_few_fewshot_docs(tmp_path):
    from runner.tasks.fewshot import FewshotError

    path = rows_file(tmp_path, ROWS)
    task = build(helpers.run_config(node_for(path, fewshot_split="test", num_fewshot=2)))
    with pytest.raises(FewshotError, match="num_fewshot=2 needs 3 few-shot docs"):
        task.docs()


def test_hub_dataset_not_cached_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    node = {"task": "t", "dataset_path": "nobody-xyz/not-a-dataset", "test_split": "test",
            "doc_to_text": "{{q}}", "doc_to_target": "a"}
    with pytest.raises(TaskDataError) as e:
        build(helpers.run_config(node)).docs()
    assert "dataset nobody-xyz/not-a-dataset is not available offline" in one_line(e)


def test_builtin_data_files_need_no_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, n in (("mc_mini", 32), ("arith_mini", 40), ("paragraphs_mini", 10)):
        task = build(helpers.run_config(helpers.preset_node(name)))
        assert len(task.docs()) == n
        assert task.info()["num_docs"] == n


def test_regex_that_never_matches_scores_zero_and_is_counted(tmp_path):
    from runner.engine.outputs import CompletionOutput, RequestOutput

    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps({"q": f"q{i}", "a": str(i)}) + "\n" for i in range(3)))
    node = {"task": "g", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path)}}, "test_split": "test",
            "doc_to_text": "{{q}}", "doc_to_target": "a",
            "filter_list": [{"name": "num", "filter": [
                {"function": "regex", "regex_pattern": "ANSWER=(\\d+)"},
                {"function": "take_first"}]}]}
    task = build(helpers.run_config(node, temperature=0.0))

    class Tok:
        eos_token_id, bos_token_id = 0, None

        def encode(self, text, **kw):
            return [ord(c) for c in text]

        def decode(self, ids):
            return "".join(chr(i) for i in ids) if ids != [0] else "</s>"

    texts = ["ANSWER=0", "the answer is 1", "no idea"]
    records = []
    for doc, text in zip(task.docs(), texts):
        reqs = task.requests(doc, Tok(), 512)
        out = RequestOutput(request_id=doc.id, prompt=reqs[0].prompt,
                            prompt_token_ids=reqs[0].prompt_token_ids, prompt_logprobs=None,
                            outputs=[CompletionOutput(0, text, [1], None, None,
                                                      finish_reason="stop")],
                            finished=True)
        records.append(task.record(doc, reqs, [out]))
    assert [r["scores"]["exact_match,num"] for r in records] == [1.0, 0.0, 0.0]
    assert [r["unmatched"] for r in records] == [[], ["num"], ["num"]]
    result = task.aggregate(records)["results"]["g"]
    assert result["unmatched"] == {"num": 2}
    assert any("matched nothing in 2 of 3 items" in w for w in result["warnings"])


def test_anchor_data_files_records_where_the_files_were_read(tmp_path, monkeypatch):
    """The lifecycle anchors a task's relative data_files at the working folder (where lm-eval
    reads them); hub-relative names that are not here, builtin: and URLs stay as written."""
    from runner.tasks.config import TaskConfig
    from runner.tasks.data import anchor_data_files

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text("{}\n")
    files = {"test": "a.jsonl", "train": ["sub/*.jsonl", "repo/only.parquet"],
             "validation": "builtin:mc_mini.jsonl", "x": "hf://datasets/u/r/x.parquet"}
    node = TaskConfig(group="g", subtasks={"t": TaskConfig(
        task="t", dataset_kwargs={"data_files": files, "field": "rows"})})
    anchor_data_files(node)
    got = node.subtasks["t"].dataset_kwargs
    assert got["data_files"] == {"test": str(tmp_path / "a.jsonl"),
                                 "train": [str(tmp_path / "sub" / "*.jsonl"), "repo/only.parquet"],
                                 "validation": "builtin:mc_mini.jsonl",
                                 "x": "hf://datasets/u/r/x.parquet"}
    assert got["field"] == "rows"
