"""The request loop of eval and generate: any Task, through any Backend, into the journal.

    docs not yet in predictions.jsonl
      -> task.requests(doc, tokenizer, max_model_len)   one or more Requests per doc
      -> backend.submit("<doc id>/<k>", request)         every request of every doc up front:
                                                         the engine schedules them itself
      -> backend.results() until every doc is complete
           each finished RequestOutput -> its doc; the doc's last one ->
           task.record(doc, requests, outputs) -> predictions.jsonl (fsynced at once)
      -> the records of every doc of the run (resumed ones too), in the task's order

A doc is journaled only when all of its requests finished, so a resume redoes whole docs,
never half of one. On any error (or an interrupt) the requests still in flight are aborted;
what was journaled stays. The progress bar counts finished items and shows prompt tokens
processed and tokens generated, from the backend's stats after every step, so it moves while a
long prefill runs in chunks.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

from runner.benchmark import BenchmarkRecorder

log = logging.getLogger("runner")


class _Progress:
    def __init__(self, enabled: bool, total_items: int, prompt_tokens: int, stats: dict):
        self.bar = None
        self.prompt_tokens = prompt_tokens
        self.base = (stats.get("num_prompt_tokens", 0), stats.get("num_generation_tokens", 0))
        self.last = 0.0
        if enabled and total_items:
            from tqdm import tqdm

            self.bar = tqdm(total=total_items, desc="items", unit="item", dynamic_ncols=True)

    def item_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def step(self, stats: dict) -> None:
        if self.bar is None:
            return
        done = stats.get("num_prompt_tokens", 0) - self.base[0]
        out = stats.get("num_generation_tokens", 0) - self.base[1]
        self.bar.set_postfix_str(f"prompt tokens {min(done, self.prompt_tokens)}/"
                                 f"{self.prompt_tokens}, generated {out}", refresh=False)
        # redrawn at tqdm's own pace (mininterval, 0.1 s; TQDM_MININTERVAL), not every step
        now = time.monotonic()
        if now - self.last >= self.bar.mininterval:
            self.last = now
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Pending:
    __slots__ = ("doc", "requests", "outputs", "remaining")

    def __init__(self, doc: Any, requests: list):
        self.doc = doc
        self.requests = requests
        self.outputs: list = [None] * len(requests)
        self.remaining = len(requests)


def drive(task: Any, docs: list, session: Any) -> tuple[list[dict], dict]:
    """Run every unfinished doc; (records of all docs in order, benchmark.json's body)."""
    backend = session.backend
    with session.folder.predictions() as preds:
        if preds.dropped_bytes:
            log.warning("cut a truncated last line (%d bytes) from %s", preds.dropped_bytes,
                        preds.path)
        if preds.duplicates:
            log.warning("%d duplicate lines in %s (the first of each is kept)", preds.duplicates,
                        preds.path)
        wanted = {d.id for d in docs}
        resumed = len(preds.done_ids & wanted)
        todo = [d for d in docs if d.id not in preds.done_ids]
        session.session.update(resumed_items=resumed, todo_items=len(todo))
        session.save_manifest()
        log.info("%d items to run, %d already in predictions.jsonl", len(todo), resumed)

        bench = BenchmarkRecorder()
        pending: dict[str, _Pending] = {}
        owner: dict[str, tuple[str, int]] = {}
        progress: Optional[_Progress] = None
        try:
            tokenizer, max_len = backend.tokenizer, backend.max_model_len
            prompt_tokens = 0
            for doc in todo:
                requests = list(task.requests(doc, tokenizer, max_len))
                if not requests:
                    preds.append(task.record(doc, [], []))
                    continue
                pending[doc.id] = _Pending(doc, requests)
                for k, request in enumerate(requests):
                    rid = f"{doc.id}/{k}"
                    backend.submit(rid, request)
                    owner[rid] = (doc.id, k)
                    prompt_tokens += len(request.prompt_token_ids or [])
            progress = _Progress(session.use_tqdm, len(pending), prompt_tokens, backend.stats())
            while pending:
                for out in backend.results():
                    if not out.finished or out.request_id not in owner:
                        continue
                    doc_id, k = owner.pop(out.request_id)
                    entry = pending[doc_id]
                    entry.outputs[k] = out
                    entry.remaining -= 1
                    bench.add(out)
                    if entry.remaining == 0:
                        del pending[doc_id]
                        preds.append(task.record(entry.doc, entry.requests, entry.outputs))
                        progress.item_done()
                progress.step(backend.stats())
        except BaseException:
            if owner:
                backend.abort(list(owner))
            raise
        finally:
            if progress is not None:
                progress.close()
        by_id = {str(r["id"]): r for r in preds.records}
        records = [by_id[d.id] for d in docs if d.id in by_id]
    stats = backend.stats()
    device = str(stats.get("device", getattr(session.cfg.engine, "device", "?")))
    benchmark = bench.finish(engine_stats=stats, device=device, resumed=resumed,
                             load_seconds=backend.model_info().get("load_seconds"))
    return records, benchmark
