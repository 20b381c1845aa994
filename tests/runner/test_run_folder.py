"""The run folder's pieces without a model: the one-writer lock and its stale takeover, path
containment and symlinks, secret redaction, umask, leftover temp files, and recipes as data."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from runner.run.folder import RunFolderError, contained
from runner.run.lock import LOCK_NAME, RunInUseError, RunLock, lock_is_held
from runner.run.recipe import RecipeError, load_recipe, recipe_document
from runner.run.secrets import (REDACTED, SecretMask, is_secret_key, recipe_refs, redact,
                                redact_override)
from runner import store


# --------------------------------------------------------------------------------- the lock


def _holder(tmp_path, pid_text: str | None = None) -> subprocess.Popen:
    """A process that locks tmp_path/.lock (writing `pid_text` or its PID) and waits."""
    code = textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(tmp_path / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, ({pid_text!r} or f"{{os.getpid()}} {os.uname().nodename}").encode())
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_holder_is_named_and_the_second_writer_refused(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunInUseError) as e:
            RunLock(tmp_path).acquire()
        assert f"is in use by PID {proc.pid}" in str(e.value) and "\n" not in str(e.value)
        assert lock_is_held(tmp_path)
    finally:
        proc.kill()
        proc.wait()


def test_a_dead_pids_lock_is_stale_and_taken_over(tmp_path):
    # kill -9 leaves .lock with the dead runner's PID and no flock: the next run takes it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    host = os.uname().nodename
    (tmp_path / LOCK_NAME).write_text(f"{dead} {host}\n")
    assert not lock_is_held(tmp_path)
    lock = RunLock(tmp_path).acquire()
    assert lock.previous == (int(dead), host)
    assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    # a child that outlived its killed runner still holds the file: it is replaced
    proc = _holder(tmp_path, f"{dead} {host}")
    try:
        assert not lock_is_held(tmp_path)
        lock = RunLock(tmp_path).acquire()
        assert lock.took_over_stale and lock.previous[0] == int(dead)
        lock.release()
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_file_is_never_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).symlink_to(victim)
    with pytest.raises(RunInUseError, match="symlink"):
        RunLock(run_dir).acquire()
    assert victim.read_text() == "keep me"


# --------------------------------------------------------------------------------- paths


@pytest.mark.parametrize("path", ["../..", "..", "/etc", "a/../../b", "."])
def test_paths_outside_output_root_are_refused(tmp_path, path):
    with pytest.raises(RunFolderError, match="outside"):
        contained(Path(path), tmp_path / "out", f"experiment={path}")


def test_symlinked_folders_inside_output_root_are_refused(tmp_path):
    root = tmp_path / "out"
    (root).mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "exp").symlink_to(elsewhere)
    with pytest.raises(RunFolderError, match="is a symlink"):
        contained(Path("exp/run1"), root, "run_id=run1")
    assert contained(Path("a/b"), root, "x") == root.resolve() / "a" / "b"


def test_journal_and_atomic_writes_refuse_symlinks(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / store.PREDICTIONS).symlink_to(victim)
    with pytest.raises(store.SymlinkRefused):
        store.PredictionLog(tmp_path / store.PREDICTIONS).open()
    (tmp_path / "metrics.json").symlink_to(victim)
    with pytest.raises(store.SymlinkRefused):
        store.atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    assert victim.read_text() == "keep me"


def test_leftover_temp_files_are_cleaned(tmp_path):
    (tmp_path / ".metrics.json.abc123.tmp").write_text("half")
    (tmp_path / "predictions.jsonl").write_text("")
    assert store.clean_temp_files(tmp_path) == [".metrics.json.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.jsonl"]


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        store.atomic_write_json(tmp_path / "m.json", {})
        assert oct((tmp_path / "m.json").stat().st_mode & 0o777) == oct(0o600)
        assert store.current_umask() == 0o077
    finally:
        os.umask(old)


# --------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("key,secret", [
    ("api_key", True), ("hf_token", True), ("clientSecret", True), ("db_password", True),
    ("apikey", True), ("OPENAI_API_KEY", True), ("max_tokens", False), ("tokenizer", False),
    ("stop_token_ids", True), ("skip_special_tokens", False), ("max_num_batched_tokens", False),
    ("tokenizer_revision", False),
])
def test_secret_keys(key, secret):
    assert is_secret_key(key) is secret


def test_redaction_of_values_overrides_urls_and_logs():
    cfg = {"engine": {"api_key": "sk-live-123", "url": "http://u:pw@h:1/v1", "max_tokens": 5,
                      "stop_token_ids": [1, 2], "tokenizer": "org/tok"}}
    out = redact(cfg)
    assert out["engine"]["api_key"] == REDACTED
    assert out["engine"]["url"] == f"http://u:{REDACTED}@h:1/v1"
    assert out["engine"]["stop_token_ids"] == [1, 2] and out["engine"]["tokenizer"] == "org/tok"
    assert redact(["engine.api_key=sk-live-123", "sampling.max_tokens=5"]) == [
        f"engine.api_key={REDACTED}", "sampling.max_tokens=5"]
    assert redact_override("+engine.api_key=sk") == f"+engine.api_key={REDACTED}"
    assert recipe_refs(cfg)["engine"]["api_key"] == "${oc.env:OPENAI_API_KEY,null}"
    assert SecretMask(["sk-live-123"]).mask("Bearer sk-live-123 ok") == f"Bearer {REDACTED} ok"


# --------------------------------------------------------------------------------- recipes


def _recipe(tmp_path, config: dict, **top) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"recipe_version": 2, "choices": {}, "config": config, **top}))
    return str(path)


@pytest.mark.parametrize("config,key", [
    ({"hydra": {"callbacks": {"x": {"_target_": "builtins.open", "file": "/tmp/v",
                                    "mode": "w"}}}}, "config.hydra.callbacks.x"),
    ({"hydra": {"job": {"env_set": {"LD_PRELOAD": "/x.so"}}}}, "config.hydra.job"),
    ({"hydra": {"run": {"dir": "/tmp"}}}, "config.hydra.run"),
    ({"model": {"_target_": "os.system"}}, "config.model._target_"),
    ({"model": {"name": "m", "x": {"_args_": ["true"]}}}, "config.model.x._args_"),
    ({"tags": {"x": {"_partial_": True}}}, "config.tags.x._partial_"),
    ({"defaults": [{"override hydra/launcher": "joblib"}]}, "config.defaults"),
])
def test_recipes_are_data(tmp_path, config, key):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    with pytest.raises(RecipeError) as e:
        load_recipe(_recipe(tmp_path, config))
    assert key in str(e.value) and "\n" not in str(e.value)
    assert victim.read_text() == "keep me"


def test_documented_hydra_keys_are_allowed(tmp_path):
    doc = load_recipe(_recipe(tmp_path, {"hydra": {
        "sweeper": {"params": {"sampling.temperature": "0.2,0.7"}},
        "callbacks": {"summary": {"_target_": "runner.summary.SweepSummaryCallback"}}}}))
    assert doc["config"]["hydra"]["sweeper"]["params"] == {"sampling.temperature": "0.2,0.7"}


@pytest.mark.parametrize("choices,needle", [
    ({"model": "../../../etc/x"}, "choices.model"),
    ({"launcher": "joblib"}, "'choices' maps groups"),
])
def test_recipe_choices_are_option_names(tmp_path, choices, needle):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"choices": choices}))
    with pytest.raises(RecipeError, match=needle):
        load_recipe(str(path))


def test_unreadable_recipes_are_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"choices: {model: \xff\xfe}\n")
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_recipe(str(path))


def test_a_runs_own_recipe_is_data_and_keeps_env_references(tmp_path):
    config = {"experiment": "e", "output_root": "/o", "run_id": "r",
              "engine": {"api_key": "sk-1", "url": "http://h/v1"}}
    doc = recipe_document(config, {"model": "local", "engine": "remote", "task": None})
    assert "output_root" not in doc["config"] and "run_id" not in doc["config"]
    assert doc["config"]["engine"]["api_key"] == "${oc.env:OPENAI_API_KEY,null}"
    assert doc["choices"] == {"model": "local", "engine": "remote"}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert load_recipe(str(path))["config"]["engine"]["url"] == "http://h/v1"


def test_lock_release_keeps_nothing_behind(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).is_file()
        time.sleep(0.01)
    assert not (tmp_path / LOCK_NAME).exists()
