"""One lm-eval task on the runner's engine: runner.tasks.api.Task for a single TaskSpec.

    docs()      rows loaded (runner/tasks/data.py), the first `limit` eval docs kept, and for
                each of them, in order, its few-shot examples drawn (fewshot.FewshotSampler)
    requests()  the prompt rendered (plain text, or the tokenizer's chat template) and turned
                into engine requests by output type (runner/tasks/scoring.py):
                  multiple_choice        one request per choice: context + delimiter+choice
                  loglikelihood          one request: context + target
                  loglikelihood_rolling  one request per rolling window of the target text
                  generate_until         one request, the effective sampling (sampling.py)
    record()    the RequestOutputs scored: log-likelihoods and is_greedy per choice / window,
                generations cut at `until`, each filter pipeline's answer, per-item metric
                values keyed "metric,filter" (lm-eval's keys) and the unmatched regex filters
    aggregate() per metric the aggregation, its stderr (metrics.py) and the item count, plus
                the number of unmatched items per filter and the task's warnings
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from runner.engine.sampling_params import SamplingParams
from runner.tasks import fewshot, metrics, scoring
from runner.tasks.api import Doc, Request, item_seed
from runner.tasks.data import TaskDataError, TaskRows, load_rows
from runner.tasks.filters import Pipeline
from runner.tasks.sampling import SAMPLING_EPS, generation
from runner.tasks.spec import TaskSpec
from runner.tasks.templates import Renderer, process_results_fn


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False)


class LmEvalTask:
    """A single task. `sampling` is the run's SamplingConfig (generate_until tasks only)."""

    def __init__(self, spec: TaskSpec, sampling, run_seed: int, limit: Optional[int]):
        self.spec = spec
        self.name = spec.name
        self.output_type = spec.output_type
        self.sampling = sampling
        self.run_seed = run_seed
        self.limit = limit
        self.where = f"task {spec.name}"
        self.pipelines = [Pipeline(n, steps, self.where) for n, steps in spec.filters]
        self.process_results = process_results_fn(spec.process_results, self.where)
        self._rows: Optional[TaskRows] = None
        self._docs: Optional[list[Doc]] = None
        self._shots: dict[int, list[int]] = {}
        self._renderer: Optional[Renderer] = None
        self._multiple_target = False

    # ----------------------------------------------------------------------- data
    def _load(self) -> None:
        if self._docs is not None:
            return
        rows = load_rows(self.spec, self.where)
        if not rows.eval_docs:
            raise TaskDataError(f"{self.where}: split {rows.eval_split!r} has no rows")
        selected = rows.eval_docs[:self.limit] if self.limit is not None else rows.eval_docs
        spec = self.spec
        self._renderer = Renderer(self.where, rows.features, spec.doc_to_choice is not None)
        # lm-eval decides "multiple targets" from the first doc's target
        if spec.doc_to_target is not None:
            first = self._renderer.target(spec.doc_to_target, rows.eval_docs[0], 0)
            self._multiple_target = isinstance(first, list)
        sampler = fewshot.FewshotSampler(rows.fewshot_docs, spec.fewshot.sampler,
                                         spec.fewshot_seed, spec.fewshot.fewshot_indices,
                                         self.where)
        # lm-eval removes the eval doc from its draw when the few-shot split is the eval split
        same_split = spec.fewshot.split == spec.test_split
        for i, row in enumerate(selected):
            self._shots[i] = sampler.sample(spec.num_fewshot, row if same_split else None)
        self._sampler_pool = sampler.pool
        self._rows = rows
        docs = [Doc(id=f"{self.name}/{i}", task=self.name, index=i, doc=row)
                for i, row in enumerate(selected)]
        # Every doc's fields are rendered once now, so a missing field or an empty choice
        # list fails before the first request rather than in the middle of a run.
        for doc in docs:
            if spec.doc_to_text is not None:
                self._renderer.text(spec.doc_to_text, doc.doc, doc.id)
            if spec.doc_to_choice is not None:
                self._choices(doc)
            if spec.doc_to_target is not None:
                self._gold(doc)
        self._docs = docs

    def docs(self) -> list[Doc]:
        self._load()
        return list(self._docs)

    def info(self) -> dict:
        self._load()
        spec, rows = self.spec, self._rows
        out = {"name": self.name, "alias": spec.alias, "output_type": self.output_type,
               "dataset_path": spec.dataset_path, "dataset_name": spec.dataset_name,
               "eval_split": rows.eval_split, "split_sizes": rows.split_sizes,
               "num_docs": len(self._docs), "num_fewshot": spec.num_fewshot,
               "fewshot_source": rows.fewshot_source, "fewshot_seed": spec.fewshot_seed,
               "version": spec.version, "metrics": self.score_names(),
               "primary_metric": self.score_names()[0],
               "filters": [p.name for p in self.pipelines],
               "apply_chat_template": spec.apply_chat_template,
               "fingerprint": self.fingerprint(), "warnings": self.warnings()}
        if self.output_type == "generate_until":
            out["generation"] = generation(spec.generation_kwargs, self.sampling, spec.repeats,
                                           None, self.where)["params"]
            out["generation"]["stop_note"] = "the tokenizer's EOS text is added to stop"
        return out

    def score_names(self) -> list[str]:
        """The keys of aggregate()'s `scores`, in its order: "metric,filter" (lm-eval's names);
        a task that generates nothing scores under the filter "none"."""
        filters = [p.name for p in self.pipelines] if self.output_type == "generate_until" \
            else ["none"]
        return [f"{m.name},{f}" for f in filters for m in self.spec.metrics]

    def warnings(self) -> list[str]:
        return list(self.spec.warnings) + (list(self._rows.warnings) if self._rows else [])

    def fingerprint(self) -> str:
        self._load()
        h = hashlib.sha256()
        h.update(_json(self.spec.config).encode())
        for d in self._docs:
            h.update(_json(d.doc).encode())
        for i in sorted(self._shots):
            h.update(_json([self._sampler_pool[j] for j in self._shots[i]]).encode())
        return h.hexdigest()[:16]

    # ----------------------------------------------------------------------- prompts
    def _messages(self, doc: Doc) -> list:
        spec, r = self.spec, self._renderer
        fs = spec.fewshot
        msgs = fewshot.system_message(spec.system_instruction,
                                      r.field_or_template(spec.description, doc.doc, doc.id,
                                                          "description") or "",
                                      spec.fewshot_delimiter)
        for j in self._shots[doc.index]:
            ex = self._sampler_pool[j]
            ex_id = f"few-shot doc {j}"
            choices = r.choices(fs.doc_to_choice, ex, ex_id) if fs.doc_to_choice else None
            msgs += fewshot.qa_turn(r.text(fs.doc_to_text, ex, ex_id), choices,
                                    r.target(fs.doc_to_target, ex, ex_id),
                                    r.field_or_template(fs.gen_prefix, ex, ex_id, "gen_prefix"),
                                    fs.target_delimiter, fs.fewshot_delimiter, self.where)
        q = r.text(spec.doc_to_text, doc.doc, doc.id) if spec.doc_to_text is not None else ""
        choices = self._choices(doc) if spec.doc_to_choice is not None else None
        gen_prefix = r.field_or_template(spec.gen_prefix, doc.doc, doc.id, "gen_prefix")
        msgs += fewshot.qa_turn(q, choices, None, gen_prefix, spec.target_delimiter, "",
                                self.where)
        return msgs

    def _choices(self, doc: Doc) -> list[str]:
        return self._renderer.choices(self.spec.doc_to_choice, doc.doc, doc.id)

    def _prompt(self, doc: Doc, tokenizer) -> tuple[str, Optional[list]]:
        msgs = self._messages(doc)
        if not self.spec.apply_chat_template:
            return fewshot.to_text(msgs), None
        chat = fewshot.chat_messages(msgs, self.spec.fewshot_as_multiturn)
        gen_prefix = self._renderer.field_or_template(self.spec.gen_prefix, doc.doc, doc.id,
                                                      "gen_prefix")
        text = tokenizer.apply_chat_template(chat, tokenize=False,
                                             add_generation_prompt=not gen_prefix,
                                             continue_final_message=bool(gen_prefix))
        return text, chat

    def _gold(self, doc: Doc) -> Any:
        return self._renderer.target(self.spec.doc_to_target, doc.doc, doc.id)

    # ----------------------------------------------------------------------- requests
    def requests(self, doc: Doc, tokenizer, max_model_len: int) -> list[Request]:
        self._load()
        kind = self.output_type
        where = f"{self.where} doc {doc.index}"
        if kind == "loglikelihood_rolling":
            text = self._gold(doc)
            if not isinstance(text, str):
                raise scoring.ScoringError(f"{where}: doc_to_target must give the text to "
                                           f"score, got {type(text).__name__}")
            ids = scoring.encode(tokenizer, text)
            windows = scoring.rolling_windows(ids, scoring.prefix_token_id(tokenizer),
                                              max_model_len)
            return [Request(prompt_token_ids=ctx + pred, params=scoring.scoring_params(),
                            meta={"window": w, "continuation_start": len(ctx)})
                    for w, (ctx, pred) in enumerate(windows)]
        prompt, chat = self._prompt(doc, tokenizer)
        if kind == "generate_until":
            eos = tokenizer.decode([tokenizer.eos_token_id]) \
                if tokenizer.eos_token_id is not None else None
            gen = generation(self.spec.generation_kwargs, self.sampling, self.spec.repeats, eos,
                             self.where)
            params = dict(gen["params"])
            if params["seed"] is None and params["temperature"] >= SAMPLING_EPS:
                params["seed"] = item_seed(self.run_seed, doc.id)
            ids = scoring.encode(tokenizer, prompt)
            room = max_model_len - params["max_tokens"]
            if room < 1:
                raise scoring.ScoringError(f"{where}: max_tokens={params['max_tokens']} leaves "
                                           f"no room for a prompt in max_model_len="
                                           f"{max_model_len}")
            truncated = len(ids) > room
            return [Request(prompt_token_ids=ids[-room:], params=SamplingParams(**params),
                            prompt=prompt, messages=chat,
                            meta={"until": gen["until"], "truncated": truncated,
                                  "params": params})]
        if kind == "multiple_choice":
            delim = fewshot.target_delimiter_for(self.spec.target_delimiter,
                                                 self.spec.gen_prefix,
                                                 self.spec.apply_chat_template)
            conts = [delim + c for c in self._choices(doc)]
        else:
            target = self._gold(doc)
            if not isinstance(target, str):
                raise scoring.ScoringError(f"{where}: a loglikelihood task's doc_to_target "
                                           f"must give text, got {type(target).__name__}")
            conts = [target]
        out = []
        for i, cont in enumerate(conts):
            ctx_ids, cont_ids = scoring.context_continuation(tokenizer, prompt, cont)
            ids, start = scoring.loglikelihood_prompt(ctx_ids, cont_ids, max_model_len, where)
            out.append(Request(prompt_token_ids=ids, params=scoring.scoring_params(),
                               prompt=prompt, messages=chat,
                               meta={"choice": i, "continuation": cont,
                                     "continuation_start": start}))
        return out

    # ----------------------------------------------------------------------- records
    def record(self, doc: Doc, requests: list[Request], outputs: list) -> dict:
        self._load()
        where = f"{self.where} doc {doc.index}"
        rec: dict[str, Any] = {"id": doc.id, "task": self.name, "index": doc.index,
                               "prompt": requests[0].prompt if requests else None}
        kind, spec = self.output_type, self.spec
        if kind == "generate_until":
            return self._record_generation(doc, requests[0], outputs[0], rec)
        scored = [scoring.continuation_score(o, r.prompt_token_ids,
                                             r.meta["continuation_start"], where)
                  for r, o in zip(requests, outputs)]
        if kind == "loglikelihood_rolling":
            ll = sum(s[0] for s in scored)
            text = self._gold(doc)
            rec.update(loglikelihood=ll, windows=len(scored),
                       num_tokens=sum(len(r.prompt_token_ids) - r.meta["continuation_start"]
                                      for r in requests))
            values = self.process_results(doc.doc, ll) if self.process_results else \
                metrics.score_rolling(ll, text, spec.metrics)
        elif kind == "loglikelihood":
            ll, greedy = scored[0]
            rec.update(target=requests[0].meta["continuation"], loglikelihood=ll,
                       is_greedy=greedy)
            values = metrics.score_loglikelihood(ll, greedy, spec.metrics)
        else:
            choices = self._choices(doc)
            gold = self._gold(doc)
            rec.update(target=gold, choices=[
                {"text": c, "loglikelihood": ll, "is_greedy": g}
                for c, (ll, g) in zip(choices, scored)])
            values = metrics.score_choices([s[0] for s in scored], [s[1] for s in scored],
                                           choices, gold, spec.metrics)
        rec["scores"] = {f"{k},none": v for k, v in values.items()}
        return rec

    def _record_generation(self, doc: Doc, request: Request, output, rec: dict) -> dict:
        until = request.meta["until"]
        raw = []
        for completion in output.outputs:
            text = completion.text
            for term in until:  # lm-eval cuts post hoc at every stop string as well
                if term:
                    text = text.split(term)[0]
            raw.append(text)
        gold = self._gold(doc)
        if self.spec.doc_to_choice is not None:
            gold = self._choices(doc)[gold]
        elif self._multiple_target:
            gold = list(gold) if isinstance(gold, (list, tuple)) else [gold]
        rec.update(target=gold, raw=raw, params=request.meta["params"],
                   truncated=request.meta["truncated"], filtered={}, unmatched=[], scores={})
        for pipe in self.pipelines:
            answer, unmatched = pipe.apply(raw, doc.doc)
            g = gold
            if not self._multiple_target and not isinstance(answer, list) \
                    and type(g) is not type(answer):
                g = type(answer)(g)
            rec["filtered"][pipe.name] = answer
            if unmatched:
                rec["unmatched"].append(pipe.name)
            for k, v in metrics.score_generation(answer, g, self._multiple_target,
                                                 self.spec.metrics).items():
                rec["scores"][f"{k},{pipe.name}"] = v
        return rec

    # ----------------------------------------------------------------------- metrics
    def aggregate(self, records: list[dict]) -> dict:
        result = self.task_result([r for r in records if r.get("task") == self.name])
        return {"task": self.name, "output_type": self.output_type,
                "num_items": result["num_items"], "results": {self.name: result}, "groups": {},
                "scores": {k: v["value"] for k, v in result["metrics"].items()},
                "warnings": [f"{self.name}: {w}" for w in result["warnings"]]}

    def task_result(self, records: list[dict]) -> dict:
        aggs = {m.name: m.aggregation for m in self.spec.metrics}
        items: dict[str, list] = {}
        for rec in records:
            for key, value in rec.get("scores", {}).items():
                items.setdefault(key, []).append(value)
        out_metrics = {}
        for key, values in items.items():
            agg = aggs.get(key.split(",")[0], "mean")
            out_metrics[key] = {"value": metrics.aggregate(agg, values),
                                "stderr": metrics.stderr(agg, values, self.spec.bootstrap_iters),
                                "n": len(values), "aggregation": agg}
        unmatched = {p.name: sum(p.name in r.get("unmatched", []) for r in records)
                     for p in self.pipelines if self.output_type == "generate_until"}
        warnings = self.warnings()
        for name, count in unmatched.items():
            if count:
                warnings.append(f"filter {name}: the regex matched nothing in {count} of "
                                f"{len(records)} items (they score 0)")
        total = len(self._rows.eval_docs) if self._rows else None
        return {"alias": self.spec.alias, "output_type": self.output_type,
                "num_items": len(records),
                "num_samples": {"original": total, "effective": len(records)},
                "num_fewshot": self.spec.num_fewshot, "version": self.spec.version,
                "metrics": out_metrics, "unmatched": unmatched, "warnings": warnings}
