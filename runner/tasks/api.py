"""The contract between a task and the run lifecycle: docs in, engine requests out, records back.

    task = <a task factory>(...)                 built from the composed config (no Hydra here)
    task.docs()              -> list[Doc]         every item of the run, in order; Doc.id is the
                                                  resume key of predictions.jsonl
    task.requests(doc, tok, max_model_len)
                             -> list[Request]     one or more engine requests per item (a
                                                  multiple-choice item: one per choice, all
                                                  sharing the context's tokens, which the
                                                  engine's prefix cache computes once)
    task.record(doc, requests, outputs)
                             -> dict              the item's predictions.jsonl fields: rendered
                                                  prompt, per-choice loglikelihood / is_greedy,
                                                  raw and filtered answers, "scores"
    task.aggregate(records)  -> dict              metrics.json's body: per task (and group) each
                                                  metric with its stderr and item count

The lifecycle (runner/run/) owns everything around it: which docs are already done, handing
requests to a backend, waiting until every request of a doc has finished, appending the
record, and calling aggregate over every record of the run (resumed ones too). A task never
touches the run folder or the engine; it sees the engine only through the RequestOutputs a
backend returns, which are vLLM's objects (runner.engine.outputs).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, runtime_checkable

from runner.engine.outputs import RequestOutput
from runner.engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class Doc:
    """One evaluation item. `id` is unique within the run and stable across reruns."""

    id: str
    task: str  # the (sub)task it belongs to: "mmlu_abstract_algebra" inside the group "mmlu"
    index: int  # position in its task's selected docs
    doc: dict  # the dataset row (after the task's document processing)


@dataclass(frozen=True)
class Request:
    """One engine request of a doc: token ids (what the engine runs) and the text they encode."""

    prompt_token_ids: list[int]
    params: SamplingParams
    prompt: Optional[str] = None  # rendered text, for the record and for text-only backends
    # Chat messages when the prompt was rendered from a chat template (remote chat backends).
    messages: Optional[list[dict]] = None
    # What the request is for, kept in the record: e.g. {"choice": 2} or {"window": 0}.
    meta: dict = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """A whole task (or a group of tasks): see the module docstring for the data flow."""

    name: str
    output_type: str  # generate_until | multiple_choice | loglikelihood | loglikelihood_rolling

    def info(self) -> dict:
        """For manifest.json: sources, splits, row counts, fingerprint, metrics, version."""
        ...

    def fingerprint(self) -> str:
        """A hash of the selected rows and the task definition (enters the config hash)."""
        ...

    def docs(self) -> list[Doc]:
        ...

    def requests(self, doc: Doc, tokenizer: Any, max_model_len: int) -> list[Request]:
        ...

    def record(self, doc: Doc, requests: list[Request], outputs: list[RequestOutput]) -> dict:
        ...

    def aggregate(self, records: list[dict]) -> dict:
        ...


def item_seed(run_seed: int, item_id: str) -> int:
    """A per-item sampling seed: the same item samples the same text in any batch or resume."""
    digest = hashlib.sha256(f"{run_seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)
