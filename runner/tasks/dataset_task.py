"""The runner's own datasets as a Task: builtin squad_mini, hf:..., jsonl:... (runner/datasets.py
reads them, runner/metrics.py scores them), behind runner.tasks.api's Task protocol.

    DatasetTask(cfg)                     cfg.dataset (source, preset, template, chat, ...),
                                         cfg.sampling, cfg.seed, cfg.limit, cfg.mode
      .docs()      -> one Doc per Example, in the dataset's (selected) order
      .requests()  -> one generate Request: the chat template's rendering (LLM.chat's tokens)
                      or the plain prompt (LLM.generate's), SamplingParams from cfg.sampling
                      (null values left to SamplingParams' defaults; a null max_tokens is
                      DEFAULT_MAX_TOKENS, the answer length of the runner's datasets);
                      with sampling.seed null a random run seeds each item from the run seed
                      and the item id (api.item_seed), so a sampled answer does not depend on
                      the batch it ran in
      .record()    -> the predictions.jsonl line: prompt, token ids, every output, references,
                      per-item scores (mode=eval; null for mode=generate)
      .aggregate() -> {"metric", "scores", "num_items", "dataset"} (SQuAD EM/F1 or exact match)

The prompts, seeds and scores are the ones the runner used before tasks existed, so the numbers
of a run do not move.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from runner import metrics as task_metrics
from runner.datasets import load_examples
from runner.tasks.api import Doc, Request, item_seed
from runner.validation import sampling_kwargs, sampling_mode

log = logging.getLogger("runner")
# The generation length of a dataset run when sampling.max_tokens is null (as the sampling
# presets leave it, so that a task's max_gen_toks applies to task runs): enough for the short
# extractive answers of SQuAD-style sets, and the length the default run always had.
DEFAULT_MAX_TOKENS = 32


def _logprobs_json(logprobs: Any) -> Any:
    if logprobs is None:
        return None
    out = []
    for position in logprobs:
        if position is None:
            out.append(None)
            continue
        out.append({str(tid): float(getattr(lp, "logprob", lp)) for tid, lp in position.items()})
    return out


def render_prompt(tokenizer: Any, example: Any) -> tuple[str, list[int]]:
    """(prompt text, prompt token ids) as vLLM's LLM.chat / LLM.generate would build them."""
    if tokenizer is None:
        raise ValueError("the model has no tokenizer to render prompts with; set model.tokenizer")
    if example.messages is not None:
        text = tokenizer.apply_chat_template(example.messages, tokenize=False,
                                             add_generation_prompt=True)
        # The chat template already holds the special tokens (BOS etc.); adding more would
        # change the prompt the model was trained on.
        return text, list(tokenizer.encode(text, add_special_tokens=False))
    return example.prompt, list(tokenizer.encode(example.prompt))


class DatasetTask:
    output_type = "generate_until"

    def __init__(self, cfg: Any):
        from runner.engine import SamplingParams
        from runner.schemas import Mode

        self.name = cfg.dataset.name
        self.scoring = cfg.mode == Mode.eval
        self.examples, self.dataset_info = load_examples(cfg.dataset, limit=cfg.limit)
        self._by_id = {ex.id: ex for ex in self.examples}
        self.base_params = sampling_kwargs(cfg.sampling)
        self.base_params.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        self.derive_seed = self.base_params.get("seed") is None and \
            sampling_mode(cfg.sampling) == "random"
        self.run_seed = cfg.seed
        self._params = SamplingParams
        self.metric = task_metrics.get_metric(self.dataset_info.metric)

    # ------------------------------------------------------------------ what the run records
    def info(self) -> dict:
        i = self.dataset_info
        return {"source": i.source, "num_rows_total": i.num_rows_total,
                "num_examples": i.num_examples, "fingerprint": i.fingerprint, "metric": i.metric,
                "metrics": list(self.metric.keys), "primary_metric": self.metric.keys[0],
                "max_tokens": self.base_params["max_tokens"], "warnings": list(i.warnings)}

    def fingerprint(self) -> str:
        return self.dataset_info.fingerprint

    # ------------------------------------------------------------------ the protocol
    def docs(self) -> list[Doc]:
        return [Doc(id=ex.id, task=self.name, index=i, doc=ex.fields)
                for i, ex in enumerate(self.examples)]

    def requests(self, doc: Doc, tokenizer: Any, max_model_len: Optional[int]) -> list[Request]:
        ex = self._by_id[doc.id]
        text, ids = render_prompt(tokenizer, ex)
        params = dict(self.base_params)
        if self.derive_seed:
            params["seed"] = item_seed(self.run_seed, ex.id)
        return [Request(prompt_token_ids=ids, params=self._params(**params), prompt=text,
                        messages=ex.messages)]

    def record(self, doc: Doc, requests: list[Request], outputs: list) -> dict:
        ex = self._by_id[doc.id]
        (request,), (out,) = requests, outputs
        prediction = out.outputs[0].text if out.outputs else ""
        scores = task_metrics.score(self.dataset_info.metric, prediction, ex.references) \
            if self.scoring else None
        entries = []
        for c in out.outputs:
            entry = {"index": c.index, "text": c.text, "token_ids": list(c.token_ids),
                     "cumulative_logprob": c.cumulative_logprob,
                     "finish_reason": c.finish_reason,
                     "stop_reason": getattr(c, "stop_reason", None)}
            if getattr(c, "logprobs", None) is not None:
                entry["logprobs"] = _logprobs_json(c.logprobs)
            entries.append(entry)
        record = {"id": ex.id, "index": doc.index, "prompt": request.prompt,
                  "prompt_token_ids": list(request.prompt_token_ids), "prediction": prediction,
                  "outputs": entries, "references": list(ex.references or []),
                  "scores": scores}
        if getattr(out, "prompt_logprobs", None) is not None:
            record["prompt_logprobs"] = _logprobs_json(out.prompt_logprobs)
        return record

    def aggregate(self, records: list[dict]) -> dict:
        agg = task_metrics.aggregate(self.dataset_info.metric, [r["scores"] for r in records])
        return {"metric": self.dataset_info.metric,
                "scores": {k: v for k, v in agg.items() if k != "num_items"},
                "num_items": agg.get("num_items", len(records)),
                "dataset": self.dataset_info.source}
