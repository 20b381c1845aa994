"""Sweeps through Hydra's launcher plugins, and the sweep folder's rules (runner/sweep.py).

    python -m runner -m hydra/launcher=joblib ... seed=1,2
        two jobs in parallel processes, each in its own run folder of a fresh sweep folder,
        the summary written once by the submitting process after both
    python -m runner -m hydra/launcher=submitit_local ... seed=1,2,3 hydra.sweep.dir=THAT
        the same sweep resumed through submitit's local executor (each job a subprocess): the
        two finished jobs are skipped by their config hash without running again, the new one
        runs, the summary covers all three
A preset whose plugin is missing is one line before Hydra starts; installed presets compose on
the plugin's own schema (a typo in hydra.launcher.* fails); a second sweep never gets the
folder of the first; a job that did not complete makes the exit code 1.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner import cli, launchers, sweep
from tests.e2e.helpers import read_json, read_predictions, run_cli, tiny_args, write_jsonl

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def _sweep_args(model, data, out):
    return [*tiny_args(model, data, out), "engine=cpu_small", "cpu_threads=1",
            "sampling.max_tokens=4"]


@pytest.fixture(scope="module")
def joblib_sweep(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    data = write_jsonl(root / "data.jsonl", 3)
    out = root / "out"
    proc = run_cli(["-m", "hydra/launcher=joblib", *_sweep_args(tiny_llama, data, out),
                    "seed=1,2"], cwd=root, check=True)
    folders = sorted((out / "default").glob("sweep_*"))
    return {"root": root, "data": data, "out": out, "proc": proc, "folders": folders}


def test_a_joblib_sweep_runs_each_job_in_its_folder_and_summarizes_once(joblib_sweep):
    proc, folders = joblib_sweep["proc"], joblib_sweep["folders"]
    assert len(folders) == 1
    sweep_dir = folders[0]
    for num, seed in ((0, 1), (1, 2)):
        m = read_json(sweep_dir / str(num) / "manifest.json")
        assert m["status"] == "completed" and f"seed={seed}" in m["overrides"]
        assert len(read_predictions(sweep_dir / str(num))) == 3
    assert read_json(sweep_dir / "0" / "manifest.json")["sessions"][0]["pid"] != \
        read_json(sweep_dir / "1" / "manifest.json")["sessions"][0]["pid"]  # two processes
    assert proc.stdout.count("sweep summary:") == 1
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert [(r["job"], r["seed"], r["status"]) for r in rows] == [("0", "1", "completed"),
                                                                  ("1", "2", "completed")]
    assert (sweep_dir / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_an_interrupted_sweep_resumes_through_submitit_skipping_finished_jobs(
        joblib_sweep, tiny_llama):
    sweep_dir = joblib_sweep["folders"][0]
    before = {n: (sweep_dir / n / "manifest.json").read_text() for n in ("0", "1")}
    proc = run_cli(["-m", "hydra/launcher=submitit_local",
                    *_sweep_args(tiny_llama, joblib_sweep["data"], joblib_sweep["out"]),
                    "seed=1,2,3", f"hydra.sweep.dir={sweep_dir}"],
                   cwd=joblib_sweep["root"], check=True)
    for n in ("0", "1"):  # finished before: not run again, not even a new session
        assert (sweep_dir / n / "manifest.json").read_text() == before[n]
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.out"))
    assert logs.count("skipped: finished in an earlier run of this sweep") == 2
    m = read_json(sweep_dir / "2" / "manifest.json")
    assert m["status"] == "completed" and "seed=3" in m["overrides"]
    assert len(read_predictions(sweep_dir / "2")) == 3
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert [r["seed"] for r in rows] == ["1", "2", "3"]
    assert proc.stdout.count("sweep summary:") == 1
    assert sorted(p.name for p in joblib_sweep["out"].joinpath("default").iterdir()) == \
        [sweep_dir.name]


@pytest.mark.slow
@pytest.mark.skipif(not launchers.installed("ray"), reason="hydra-ray-launcher not installed")
def test_a_ray_launcher_sweep_runs_jobs_as_tasks_and_engines_as_replicas(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", 3)
    out = tmp_path / "out"
    proc = run_cli(["-m", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                    "+hydra.launcher.ray.init.include_dashboard=false",
                    *_sweep_args(tiny_llama, data, out), "seed=1,2"], cwd=tmp_path, check=True)
    (sweep_dir,) = (out / "default").glob("sweep_*")
    for num in ("0", "1"):
        m = read_json(sweep_dir / num / "manifest.json")
        assert m["status"] == "completed" and m["backend"]["kind"] == "ray"
        assert m["backend"]["data_parallel_size"] == 1
        assert len(read_predictions(sweep_dir / num)) == 3
    assert proc.stdout.count("sweep summary:") == 1
    assert len(list(csv.DictReader(open(sweep_dir / "summary.csv")))) == 2


def test_a_second_sweep_never_gets_the_first_ones_folder(tmp_path):
    cli.config_store()
    argv = ["-m", f"output_root={tmp_path}", "seed=1,2"]
    overrides = argv[1:]
    _, first = cli.sweep_dir_override(list(argv), overrides)
    Path(first).mkdir(parents=True)
    argv2, second = cli.sweep_dir_override(list(argv), overrides)
    assert second != first and Path(second).parent == Path(first).parent == tmp_path / "default"
    assert argv2[-1] == f"hydra.sweep.dir={cli.hydra_quote(second)}"
    assert cli.sweep_dir_override(argv + ["hydra.sweep.dir=/x/y"],
                                  overrides + ["hydra.sweep.dir=/x/y"])[1] == "/x/y"
    (tmp_path / "s").mkdir()
    (tmp_path / "s-2").mkdir()
    assert sweep.fresh_sweep_dir(tmp_path / "s") == str(tmp_path / "s-3")
    assert sweep.fresh_sweep_dir(tmp_path / "new") == str(tmp_path / "new")


def test_jobs_that_did_not_complete_are_named(tmp_path, capsys):
    for num, status in (("0", "completed"), ("1", "failed"), ("2", None)):
        (tmp_path / num).mkdir()
        if status:
            (tmp_path / num / "manifest.json").write_text(json.dumps({"status": status}))
    (tmp_path / ".submitit").mkdir()
    lines = sweep.finish_sweep(tmp_path, started=0.0)
    assert lines == ["job 1: failed", "job 2: failed before its run folder was made"]
    assert (tmp_path / "summary.csv").is_file()  # no callback wrote it: written here, once
    assert capsys.readouterr().out.count("sweep summary:") == 1


def test_a_preset_without_its_plugin_is_one_line_before_hydra(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(launchers, "installed", lambda preset: preset != "joblib")
    code = cli.main(["-m", "hydra/launcher=joblib", f"output_root={tmp_path}", "seed=1,2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err == ("runner: error: hydra/launcher=joblib: the Hydra plugin hydra-joblib-launcher"
                   " is not installed: pip install 'hydra-joblib-launcher==1.2.0' (or pip "
                   "install 'runner[joblib]')")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("preset", sorted(launchers.PRESETS))
def test_installed_presets_compose_on_the_plugins_schema(preset):
    if not launchers.installed(preset):
        with pytest.raises(cli.CliError, match=f"hydra/launcher={preset}: the Hydra plugin "
                                               ".* is not installed: pip install"):
            cli.compose([f"hydra/launcher={preset}"])
        return
    cli.config_store()
    cfg = cli._compose([f"hydra/launcher={preset}"], hydra_config=True)
    launcher = cfg.hydra.launcher
    module = launchers.PRESETS[preset].module
    assert launcher._target_.startswith(module + ".")
    typed = {"joblib": ("n_jobs", 2), "submitit_local": ("timeout_min", 60),
             "submitit_slurm": ("timeout_min", 240), "ray": ("ray.remote.num_gpus", 0)}[preset]
    assert OmegaConf.select(launcher, typed[0]) == typed[1]  # the preset over the plugin
    if preset != "ray":  # an int field of the plugin's dataclass refuses text
        with pytest.raises(Exception) as e:
            cli._compose([f"hydra/launcher={preset}", f"hydra.launcher.{typed[0]}=abc"],
                         hydra_config=True)
        assert "could not be converted to Integer" in str(e.value.__cause__)


def test_a_ray_launcher_job_runs_its_engine_as_replicas():
    assert launchers.job_backend("ray", "local") == "ray"
    assert launchers.job_backend("ray", "remote") == "remote"
    assert launchers.job_backend("joblib", "local") == "local"
    assert launchers.job_backend(None, "local") == "local"
