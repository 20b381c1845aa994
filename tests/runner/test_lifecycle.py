"""The lifecycle (runner.run.run) with a scripted backend, in-process: the backend is closed
whatever happens, nothing is written before the backend stands, a Task's records reach the
journal as each doc completes (every request of a multi-request doc first), and an interrupt
keeps what finished."""
from __future__ import annotations

import json

import pytest

from runner import cli
from runner.engine.outputs import CompletionOutput, RequestOutput
from runner.tasks.api import Doc, Request
from tests.e2e.helpers import write_jsonl


class FakeTokenizer:
    def encode(self, text, add_special_tokens=True):
        return [1 + ord(c) % 50 for c in text]


class FakeBackend:
    kind = "local"
    is_embedding_model = False
    max_model_len = 512

    def __init__(self, fail_after=None, interrupt_after=None, embedding=False):
        self.tokenizer = FakeTokenizer()
        self.is_embedding_model = embedding
        self.queue: list = []
        self.closed = 0
        self.done = 0
        self.fail_after, self.interrupt_after = fail_after, interrupt_after
        self.submitted: list = []

    def submit(self, rid, request):
        self.queue.append((rid, request))
        self.submitted.append(rid)

    def results(self):
        if not self.queue:
            raise RuntimeError("results() called with no request in flight")
        if self.fail_after is not None and self.done >= self.fail_after:
            raise RuntimeError("scripted engine failure")
        if self.interrupt_after is not None and self.done >= self.interrupt_after:
            raise KeyboardInterrupt
        rid, request = self.queue.pop(0)
        self.done += 1
        text = "the old sailor" if self.done % 2 else "no"
        return [RequestOutput(rid, request.prompt, list(request.prompt_token_ids), None,
                              [CompletionOutput(0, text, [5, 6], -1.0, None,
                                                finish_reason="stop")], True)]

    def abort(self, ids):
        gone = set(ids)
        self.queue = [q for q in self.queue if q[0] not in gone]

    def stats(self):
        return {"device": "fake", "num_prompt_tokens": 0, "num_generation_tokens": 0}

    def model_info(self):
        return {"resolved": "fake", "weight_files": [], "load_seconds": 0.0}

    def encode(self, texts):
        return [[1.0, float(len(t))] for t in texts]

    def close(self):
        self.closed += 1


@pytest.fixture
def setup(tmp_path, monkeypatch):
    import runner.backends as backends

    data = write_jsonl(tmp_path / "d.jsonl", 5)
    made: list = []

    def use(backend):
        monkeypatch.setattr(backends, "build_backend", lambda cfg, source, o=None: (
            made.append(backend) or backend))
        argv = ["model=local", f"model.model={tmp_path}", f"dataset=jsonl:{data}",
                "dataset.reference_field=answer", f"output_root={tmp_path / 'out'}",
                "use_tqdm=false", "run_id=r"]
        return cli.to_run_config(cli.compose(argv))

    return use, tmp_path / "out" / "default" / "r"


def test_success_closes_the_backend(setup):
    from runner.run import run

    use, run_dir = setup
    backend = FakeBackend()
    result = run(use(backend))
    assert backend.closed == 1 and result.status == "completed"
    assert result.objective == pytest.approx(60.0)  # 3 of 5 answers match
    assert len((run_dir / "predictions.jsonl").read_text().splitlines()) == 5


def test_failure_closes_the_backend_and_keeps_finished_items(setup):
    from runner.run import run

    use, run_dir = setup
    backend = FakeBackend(fail_after=2)
    with pytest.raises(RuntimeError, match="scripted engine failure") as e:
        run(use(backend))
    assert backend.closed == 1 and e.value.run_status == "failed"
    assert len((run_dir / "predictions.jsonl").read_text().splitlines()) == 2
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"
    assert not backend.queue  # the rest was aborted


def test_interrupt_closes_the_backend_and_says_how_to_resume(setup):
    from runner.run import run

    use, run_dir = setup
    backend = FakeBackend(interrupt_after=3)
    with pytest.raises(KeyboardInterrupt) as e:
        run(use(backend))
    assert backend.closed == 1 and e.value.items_done == 3
    assert e.value.resume.endswith("run_id=r")
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"


def test_a_refused_backend_is_closed_and_nothing_written(setup):
    from runner.run import run
    from runner.validation import ConfigError

    use, run_dir = setup
    backend = FakeBackend(embedding=True)
    with pytest.raises(ConfigError, match="embedding model"):
        run(use(backend))
    assert backend.closed == 1 and not run_dir.parent.parent.exists()


class TwoRequestTask:
    """A task whose docs each need two requests (multiple choice in miniature)."""

    name = "two"
    output_type = "multiple_choice"

    def __init__(self, n):
        self.n = n

    def info(self):
        return {"metrics": ["acc"], "primary_metric": "acc"}

    def fingerprint(self):
        return "f" * 64

    def docs(self):
        return [Doc(id=f"d{i}", task="two", index=i, doc={}) for i in range(self.n)]

    def requests(self, doc, tokenizer, max_model_len):
        from runner.engine import SamplingParams

        return [Request([1, 2, k], SamplingParams(max_tokens=1), prompt=f"{doc.id}:{k}",
                        meta={"choice": k}) for k in range(2)]

    def record(self, doc, requests, outputs):
        assert [o.request_id for o in outputs] == [f"{doc.id}/0", f"{doc.id}/1"]
        return {"id": doc.id, "choices": [r.meta["choice"] for r in requests],
                "scores": {"acc": 1.0}}

    def aggregate(self, records):
        return {"scores": {"acc": sum(r["scores"]["acc"] for r in records) / len(records)},
                "num_items": len(records)}


def test_any_task_plugs_in_through_build_task(setup, monkeypatch):
    import runner.tasks as tasks
    from runner.run import run

    use, run_dir = setup
    monkeypatch.setattr(tasks, "build_task", lambda cfg, **_: TwoRequestTask(3))
    backend = FakeBackend()
    result = run(use(backend))
    assert result.metrics["scores"] == {"acc": 1.0} and result.objective == 1.0
    assert backend.submitted == ["d0/0", "d0/1", "d1/0", "d1/1", "d2/0", "d2/1"]
    records = [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["d0", "d1", "d2"]
    assert json.loads((run_dir / "manifest.json").read_text())["task"] == \
        {"name": "two", "output_type": "multiple_choice"}
