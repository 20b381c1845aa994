"""`engine=remote` end to end: `python -m runner` against the in-process server on loopback gives
the local engine's greedy predictions, keeps the API key out of every file, and a wrong URL
fails before the run folder exists (issues 27.1, 28.4)."""
from __future__ import annotations

from tests.e2e.helpers import only_run_dir, read_json, read_predictions, run_cli, write_jsonl
from tests.serve.conftest import MODEL_NAME, free_port, server, tiny_model  # noqa: F401


def test_remote_run_equals_local_and_stores_no_key(server, tiny_model, tmp_path):
    base, _ = server
    write_jsonl(tmp_path / "d.jsonl", 4)
    secret = "sk-remote-abcdef0123456789"
    common = ["model=local", f"model.model={tiny_model}", "dataset=jsonl:d.jsonl",
              "dataset.reference_field=answer", "use_tqdm=false", "sampling.max_tokens=6",
              "model.max_model_len=256"]
    run_cli([*common, f"output_root={tmp_path / 'local'}", "engine.device=cpu"], cwd=tmp_path,
            check=True)
    proc = run_cli([*common, f"output_root={tmp_path / 'remote'}", "engine=remote",
                    f"engine.url={base}/v1", f"engine.served_model_name={MODEL_NAME}",
                    f"engine.api_key={secret}"], cwd=tmp_path, check=True)
    local, remote = only_run_dir(tmp_path / "local"), only_run_dir(tmp_path / "remote")
    want = {p["id"]: p["prediction"] for p in read_predictions(local)}
    assert {p["id"]: p["prediction"] for p in read_predictions(remote)} == want
    manifest = read_json(remote / "manifest.json")
    assert manifest["backend"]["kind"] == "remote" and manifest["status"] == "completed"
    assert read_json(remote / "manifest.json")["config_hash"] != \
        read_json(local / "manifest.json")["config_hash"]
    for f in remote.iterdir():
        assert secret not in f.read_text(errors="replace"), f.name
    assert secret not in proc.stdout + proc.stderr


def test_an_unreachable_server_fails_before_the_run_folder_exists(tiny_model, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", 2)
    out = tmp_path / "out"
    proc = run_cli(["model=local", f"model.model={tiny_model}", "dataset=jsonl:d.jsonl",
                    "dataset.reference_field=answer", f"output_root={out}", "engine=remote",
                    f"engine.url=http://127.0.0.1:{free_port()}/v1"], cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "cannot connect" in proc.stderr and not out.exists()
