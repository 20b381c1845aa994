"""lm-eval task files -> config nodes: includes, groups, tags, refused `!function`, key checks,
`task=lmeval:...` as a Hydra option, the Hydra searchpath, and our presets against lm-eval's
own files (resolved the same way, so a preset is the lm-eval task it mirrors)."""
from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from runner.tasks.cli_specs import register_task_specs, task_node
from runner.tasks.config import TaskConfig
from runner.tasks.spec import GroupSpec, TaskSpecError, resolve
from runner.tasks.yaml_loader import TaskFileError, lmeval_node
from tests.runner.tasks import helpers

BASE = "dataset_path: json\ntest_split: test\noutput_type: multiple_choice\n" \
       "doc_to_text: '{{q}}'\ndoc_to_choice: ['a', 'b']\ndoc_to_target: 0\n"


def write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


def spec_of(node):
    return resolve(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), node)))


def test_include_local_keys_win_and_nested_includes(tmp_path):
    write(tmp_path, "_base.yaml", BASE + "num_fewshot: 3\ndescription: base\n")
    write(tmp_path, "_mid.yaml", "include: _base.yaml\nnum_fewshot: 4\n")
    path = write(tmp_path, "t.yaml", "include: _mid.yaml\ntask: t\ndescription: mine\n")
    node = lmeval_node(path)
    assert node["num_fewshot"] == 4 and node["description"] == "mine"
    assert "include" not in node


def test_function_hooks_are_refused_naming_the_key(tmp_path):
    write(tmp_path, "utils.py", "def process_docs(ds):\n    return ds\n")
    path = write(tmp_path, "t.yaml", BASE + "task: t\nprocess_docs: !function utils.process_docs\n")
    with pytest.raises(TaskFileError) as e:
        lmeval_node(path)
    msg = str(e.value)
    assert "key process_docs" in msg and "!function utils.process_docs" in msg
    assert "native:hellaswag_process_docs" in msg and "\n" not in msg
    # also inside a metric entry, from an included file
    write(tmp_path, "_m.yaml", BASE + "metric_list:\n  - metric: !function utils.process_docs\n")
    with pytest.raises(TaskFileError, match=r"key metric_list\[0\]\.metric"):
        lmeval_node(write(tmp_path, "u.yaml", "include: _m.yaml\ntask: u\n"))


def test_lmeval_own_function_files_map_to_native_twins():
    node = lmeval_node(helpers.lmeval_tasks_dir() / "hellaswag" / "hellaswag.yaml")
    assert node["process_docs"] == "native:hellaswag_process_docs"
    node = lmeval_node(helpers.lmeval_tasks_dir() / "wikitext" / "wikitext.yaml")
    assert node["doc_to_target"] == "native:wikitext_detokenizer"
    assert node["process_results"] == "native:wikitext_process_results"


@pytest.mark.parametrize("text,needle", [
    (BASE + "task: t\ndoc_to_txt: x\n", "unknown task key 'doc_to_txt'"),
    (BASE + "task: t\nclass: !function task.X\n", "key class: Python task classes"),
    (BASE + "task: t\nmetric_list:\n  - metric: acc\n    weights: 2\n", "'weights'"),
    (BASE + "task: t\ngeneration_kwargs:\n  top_p: 0.5\n", "sampling.top_p"),
    (BASE + "task: t\nfilter_list:\n  - name: f\n    filter:\n      - function: regex\n"
            "        pattern: x\n", "unknown filter key 'pattern'"),
    ("task: [unclosed\n", "not valid YAML"),
])
def test_bad_task_files_are_one_line_errors_naming_the_key(tmp_path, text, needle):
    path = write(tmp_path, "t.yaml", text)
    with pytest.raises(TaskFileError) as e:
        lmeval_node(path)
    assert needle in str(e.value) and str(tmp_path) in str(e.value)
    assert "\n" not in str(e.value)


def test_non_utf8_task_file_names_the_line(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_bytes(b"task: t\ndescription: caf\xe9\n")
    with pytest.raises(TaskFileError, match=r"t\.yaml:2: not UTF-8 \(byte 0xe9\)"):
        lmeval_node(path)


def test_include_cycle_and_missing_include(tmp_path):
    write(tmp_path, "a.yaml", "include: b.yaml\ntask: a\n")
    write(tmp_path, "b.yaml", "include: a.yaml\n")
    with pytest.raises(TaskFileError, match="include cycle"):
        lmeval_node(tmp_path / "a.yaml")
    with pytest.raises(TaskFileError, match="no such file"):
        lmeval_node(write(tmp_path, "c.yaml", "include: nope.yaml\ntask: c\n"))


def test_groups_tags_inline_members_and_overrides_follow_lmeval(tmp_path):
    write(tmp_path, "t1.yaml", BASE + "task: t1\ntag: [shared]\nnum_fewshot: 1\n")
    write(tmp_path, "t2.yaml", BASE + "task: t2\ntag: shared\n")
    write(tmp_path, "sub.yaml", "group: sub\ntask: [t1]\nnum_fewshot: 2\n")
    path = write(tmp_path, "g.yaml",
                 "group: g\ntask:\n  - shared\n  - sub\n  - task: t1\n    task_alias: again\n"
                 "  - task: inline\n    dataset_path: json\n    doc_to_text: x\n"
                 "aggregate_metric_list:\n  - metric: acc\n")
    with pytest.raises(TaskFileError, match="'t1' appears twice"):
        lmeval_node(path)
    path = write(tmp_path, "g.yaml",
                 "group: g\ntask:\n  - shared\n  - sub\n  - task: inline\n"
                 "    dataset_path: json\n    doc_to_text: x\naggregate_metric_list:\n"
                 "  - metric: acc\nnum_fewshot: 0\n")
    from runner.tasks.lm_eval_task import build

    with pytest.raises(TaskSpecError, match=r"\['t1'\] appear more than once"):
        build(helpers.run_config(lmeval_node(path)))  # the tag and the subgroup both hold t1
    path = write(tmp_path, "g.yaml",
                 "group: g\ntask:\n  - t2\n  - sub\n  - task: inline\n    dataset_path: json\n"
                 "    doc_to_text: x\naggregate_metric_list:\n  - metric: acc\n"
                 "num_fewshot: 0\n")
    node = lmeval_node(path)
    assert list(node["subtasks"]) == ["t2", "sub", "g::inline"]
    # the outer group's own keys override the members (the inner group's too), as lm-eval
    assert node["subtasks"]["sub"]["subtasks"]["t1"]["num_fewshot"] == 0
    assert node["subtasks"]["t2"]["num_fewshot"] == 0
    assert node["subtasks"]["g::inline"]["task"] == "g::inline"
    # a tag by folder and name: its tasks, sorted, in a group with no aggregation of its own
    tag = task_node(f"lmeval:{tmp_path}/shared")
    assert list(tag["subtasks"]) == ["t1", "t2"] and "aggregate_metric_list" not in tag
    with pytest.raises(TaskFileError, match="unknown task, group or tag 'nope'"):
        lmeval_node(write(tmp_path, "h.yaml", "group: h\ntask: [nope]\n"))


def test_cli_specs_register_as_hydra_options(tmp_path):
    from hydra.core.config_store import ConfigStore

    from runner import cli

    path = write(tmp_path, "my task.yaml".replace(" ", "_"), BASE + "task: mine\nnum_fewshot: 2\n")
    spec = f"lmeval:{path}"
    register_task_specs([spec, "gsm8k"], ConfigStore.instance())
    cfg = OmegaConf.to_object(cli.compose([f"task={spec}", "task.num_fewshot=0"]))
    assert isinstance(cfg.task, TaskConfig) and cfg.task.task == "mine"
    assert cfg.task.num_fewshot == 0
    with pytest.raises(TaskFileError, match="no such task file"):
        task_node(f"lmeval:{tmp_path}/missing.yaml")
    with pytest.raises(TaskFileError, match="is a folder"):
        task_node(f"lmeval:{tmp_path}")
    bad = write(tmp_path, "bad.yaml", BASE + "task: bad\nnum_fewshot: many\n")
    with pytest.raises(TaskFileError, match="num_fewshot"):
        task_node(f"lmeval:{bad}")


def test_lmeval_group_file_composes_through_hydra():
    """lm-eval's own MMLU group file as `task=lmeval:...` (57 subtasks, names like
    mmlu_global_facts that Hydra's package syntax would misread)."""
    from hydra.core.config_store import ConfigStore

    from runner import cli

    spec = f"lmeval:{helpers.lmeval_tasks_dir() / 'mmlu' / 'default' / '_mmlu.yaml'}"
    register_task_specs([spec], ConfigStore.instance())
    cfg = OmegaConf.to_object(cli.compose([f"task={spec}"]))
    spec_tree = resolve(cfg.task)
    assert len(spec_tree.leaves()) == 57
    assert "mmlu_global_facts" in cfg.task.subtasks["mmlu_other"].subtasks


def test_hydra_searchpath_task_and_typo_at_compose_time(tmp_path):
    from runner import cli

    (tmp_path / "task").mkdir()
    write(tmp_path / "task", "mytask.yaml", BASE + "task: mytask\n")
    cfg = OmegaConf.to_object(cli.compose([f"hydra.searchpath=[file://{tmp_path}]",
                                           "task=mytask"]))
    assert cfg.task.task == "mytask"
    write(tmp_path / "task", "typo.yaml", BASE + "task: typo\nnum_fewshots: 1\n")
    with pytest.raises(Exception, match="num_fewshots"):
        cli.compose([f"hydra.searchpath=[file://{tmp_path}]", "task=typo"])
    with pytest.raises(Exception, match="num_fewshots"):
        cli.compose(["task=gsm8k", "task.num_fewshots=3"])


PRESETS = [("gsm8k", "gsm8k/gsm8k.yaml"), ("hellaswag", "hellaswag/hellaswag.yaml"),
           ("arc_easy", "arc/arc_easy.yaml"), ("arc_challenge", "arc/arc_challenge.yaml"),
           ("wikitext", "wikitext/wikitext.yaml"),
           ("mmlu_college_physics", "mmlu/default/mmlu_college_physics.yaml"),
           ("mmlu", "mmlu/default/_mmlu.yaml")]


def _effective(spec):
    out = dataclasses.asdict(spec)
    for key in ("config", "warnings"):
        out.pop(key)
    return out


@pytest.mark.parametrize("preset,path", PRESETS, ids=[p[0] for p in PRESETS])
def test_presets_resolve_like_lmeval_files(preset, path):
    """Our conf/task preset and lm-eval's own file give the same effective task settings."""
    ours = spec_of(helpers.preset_node(preset))
    theirs = spec_of(lmeval_node(helpers.lmeval_tasks_dir() / path))
    if isinstance(ours, GroupSpec):
        assert [g.name for g in ours.groups()] == [g.name for g in theirs.groups()]
        assert [g.alias for g in ours.groups()] == [g.alias for g in theirs.groups()]
        assert [g.aggregate for g in ours.groups()] == [g.aggregate for g in theirs.groups()]
        pairs = list(zip(ours.leaves(), theirs.leaves()))
        assert len(pairs) == 57
    else:
        pairs = [(ours, theirs)]
    for a, b in pairs:
        assert _effective(a) == _effective(b), a.name


def test_group_override_of_a_subtask_is_reported():
    node = helpers.preset_node("mmlu", "task.num_fewshot=5",
                               "task.subtasks.stem.subtasks.anatomy.num_fewshot=1")
    spec = spec_of(node)
    anatomy = next(t for t in spec.leaves() if t.name == "mmlu_anatomy")
    assert anatomy.num_fewshot == 5
    assert any("num_fewshot=1 is replaced by its group's num_fewshot=5" in w
               for w in anatomy.warnings)


@pytest.mark.parametrize("node,needle", [
    ({"task": "t", "output_type": "ranking"}, "output_type 'ranking'"),
    ({"task": "t", "output_type": "multiple_choice"}, "needs doc_to_choice"),
    ({"task": "t", "metric_list": [{"metric": "bleu"}]}, "metric 'bleu' is not supported"),
    ({"task": "t", "metric_list": [{"metric": "acc", "ignore_case": True}],
      "output_type": "loglikelihood"}, "options of exact_match"),
    ({"task": "t", "fewshot_config": {"sampler": "balanced"}}, "sampler 'balanced'"),
    ({"task": "t", "output_type": "loglikelihood", "generation_kwargs": {"until": ["x"]}},
     "generate_until only"),
    ({"task": "t", "output_type": "multiple_choice", "doc_to_choice": ["a"],
      "filter_list": [{"name": "f", "filter": [{"function": "take_first"}]}]},
     "filter_list applies to generate_until"),
    ({"group": "g"}, "has no subtasks"),
])
def test_spec_errors_name_the_setting(node, needle):
    with pytest.raises(TaskSpecError, match=needle):
        spec_of(node)


PRESET_FILES = sorted(p.stem for p in (helpers.preset_dir()).glob("*.yaml")
                      if not p.stem.startswith("_"))


@pytest.mark.parametrize("preset", PRESET_FILES)
def test_every_preset_composes_resolves_and_builds(preset):
    from runner.schemas import SamplingConfig
    from runner.tasks.lm_eval_task import build

    node = helpers.preset_node(preset)
    spec_of(node)
    cfg = helpers.run_config(node)
    cfg.sampling = SamplingConfig(temperature=0.0, max_tokens=None, stop=None)
    task = build(cfg)  # reads no data
    assert task.name == preset  # the file is named after its task or group
