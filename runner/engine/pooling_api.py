"""LLM's pooling methods (vLLM 0.24's PoolingOfflineMixin): encode, embed, classify, score and
reward, over the PoolingRunner. llm.py's methods are one-line calls into these functions.

    encode(prompts, pooling_params, pooling_task) -> each PoolingParams gets its task (a task
      already set must agree) -> PoolingRunner.run -> PoolingRequestOutput per prompt
    embed / classify -> encode(task "embed" / "classify") -> Embedding/ClassificationRequestOutput
    score(data_1, data_2) -> 1:1, 1:N or N:N pairs ->
      bi-encoder (embedding model): embed both sides, cosine similarity of each pair
      cross-encoder (classifier with num_labels == 1): the tokenizer's text pair through the
        classifier (sigmoid by default) -> ScoringRequestOutput per pair
    reward -> vLLM 0.24 has no LLM.reward (removed after 0.10): ours is the classifier's raw
      head output (classify with use_activation=False), what a sequence reward model reports
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F

from runner.engine.inputs import prompt_to_seq
from runner.engine.pooling_outputs import (ClassificationRequestOutput, EmbeddingRequestOutput,
                                           PoolingOutput, PoolingRequestOutput,
                                           ScoringRequestOutput)
from runner.engine.pooling_params import ALL_POOLING_TASKS, PoolingParams

_TASK_HELP = """pooling_task required for `LLM.encode`.
Please use one of the more specific methods or set the pooling_task when using `LLM.encode`:
  - For embeddings, use `LLM.embed(...)` or `pooling_task="embed"`.
  - For classification logits, use `LLM.classify(...)` or `pooling_task="classify"`.
  - For similarity scores, use `LLM.score(...)`."""


def _runner(llm, api: str):
    if llm.pooling_runner is None:
        raise ValueError(f"LLM.{api}() is only supported for pooling models. Model "
                         f"{llm.model_name!r} ({llm.llm_engine.model_config.architecture}) is "
                         "generative: use generate() or chat().")
    llm._control.check_awake(api)
    return llm.pooling_runner


def _as_list(prompts) -> list:
    prompts = prompt_to_seq(prompts)   # one prompt (a list[int] too) or several
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt.")
    return [{"prompt_token_ids": p} if isinstance(p, list) else p for p in prompts]


def _params_seq(pooling_params, n: int) -> list[PoolingParams]:
    if pooling_params is None:
        pooling_params = PoolingParams()
    if isinstance(pooling_params, PoolingParams):
        return [pooling_params.clone() for _ in range(n)]
    params = list(pooling_params)
    if len(params) != n or not all(isinstance(p, PoolingParams) for p in params):
        raise ValueError(f"got {len(params)} pooling_params for {n} prompts; give one "
                         "PoolingParams, or one per prompt.")
    return [p.clone() for p in params]


def _set_task(params: list[PoolingParams], task: str) -> None:
    for p in params:
        if p.task is None:
            p.task = task
        elif p.task != task:
            raise ValueError(f"You cannot overwrite param.task={p.task!r} with "
                             f"pooling_task={task!r}!")


def _request_ids(llm, n: int) -> list[str]:
    ids = [str(llm.request_counter + i) for i in range(n)]
    llm.request_counter += n
    return ids


def _check_lora(lora_request) -> None:
    if lora_request is not None:
        raise NotImplementedError("lora_request on pooling models is not supported; "
                                  "leave it None.")


def encode(llm, prompts, pooling_params=None, *, use_tqdm=True, lora_request=None,
           pooling_task: Optional[str] = None,
           tokenization_kwargs: Optional[dict] = None) -> list[PoolingRequestOutput]:
    runner = _runner(llm, "encode")
    _check_lora(lora_request)
    if pooling_task is None:
        raise ValueError(_TASK_HELP)
    if pooling_task not in ALL_POOLING_TASKS:
        raise ValueError(f"Unsupported task: {pooling_task!r} Supported tasks: "
                         f"{runner.supported_tasks}")
    if pooling_task in ("embed", "token_embed") and pooling_task not in runner.supported_tasks:
        raise ValueError("Embedding API is not supported by this model "
                         f"({runner.model_config.architecture}); it supports "
                         f"{list(runner.supported_tasks)}.")
    if pooling_task in ("classify", "token_classify") and \
            pooling_task not in runner.supported_tasks:
        raise ValueError("Classification API is not supported by this model "
                         f"({runner.model_config.architecture}); it supports "
                         f"{list(runner.supported_tasks)}.")
    if pooling_task not in runner.supported_tasks:
        raise ValueError(f"Unsupported task: {pooling_task!r} Supported tasks: "
                         f"{runner.supported_tasks}")
    prompts = _as_list(prompts)
    params = _params_seq(pooling_params, len(prompts))
    _set_task(params, pooling_task)
    ids = [runner.tokenize(p, tokenization_kwargs) for p in prompts]
    return runner.run(ids, params, _request_ids(llm, len(prompts)), use_tqdm=use_tqdm)


def embed(llm, prompts, *, use_tqdm=True, pooling_params=None, lora_request=None,
          tokenization_kwargs=None) -> list[EmbeddingRequestOutput]:
    items = encode(llm, prompts, pooling_params, use_tqdm=use_tqdm, lora_request=lora_request,
                   pooling_task="embed", tokenization_kwargs=tokenization_kwargs)
    return [EmbeddingRequestOutput.from_base(o) for o in items]


def classify(llm, prompts, *, pooling_params=None, use_tqdm=True, lora_request=None,
             tokenization_kwargs=None) -> list[ClassificationRequestOutput]:
    items = encode(llm, prompts, pooling_params, use_tqdm=use_tqdm, lora_request=lora_request,
                   pooling_task="classify", tokenization_kwargs=tokenization_kwargs)
    return [ClassificationRequestOutput.from_base(o) for o in items]


def reward(llm, prompts, *, pooling_params=None, use_tqdm=True, lora_request=None,
           tokenization_kwargs=None) -> list[PoolingRequestOutput]:
    runner = _runner(llm, "reward")
    if "classify" not in runner.supported_tasks:
        raise ValueError(f"LLM.reward() needs a reward (sequence classification) model; "
                         f"{runner.model_config.architecture} supports "
                         f"{list(runner.supported_tasks)}.")
    if pooling_params is None:
        pooling_params = PoolingParams(use_activation=False)
    return encode(llm, prompts, pooling_params, use_tqdm=use_tqdm, lora_request=lora_request,
                  pooling_task="classify", tokenization_kwargs=tokenization_kwargs)


def _pairs(data_1, data_2) -> tuple[list, list]:
    one = lambda d: isinstance(d, (str, dict))                      # noqa: E731
    d1 = [data_1] if one(data_1) else list(data_1)
    d2 = [data_2] if one(data_2) else list(data_2)
    if not d1 or not d2:
        raise ValueError("score() needs at least one input on each side.")
    if len(d1) == 1:
        d1 = d1 * len(d2)
    if len(d1) != len(d2):
        raise ValueError("Input lengths must be either 1:1, 1:N or N:N, got "
                         f"{len(d1)}:{len(d2)}.")
    return d1, d2


def score(llm, data_1, data_2, *, use_tqdm=True, pooling_params: Optional[PoolingParams] = None,
          lora_request=None, tokenization_kwargs=None,
          chat_template: Optional[str] = None) -> list[ScoringRequestOutput]:
    runner = _runner(llm, "score")
    _check_lora(lora_request)
    if chat_template is not None:
        raise NotImplementedError("score(chat_template=...) is for multimodal / late-"
                                  "interaction scoring, not supported; leave it None.")
    d1, d2 = _pairs(data_1, data_2)
    if runner.pooling_task == "classify":                          # cross-encoder
        if getattr(runner.model_config.hf_config, "num_labels", 0) != 1:
            raise ValueError("Scoring API is only enabled for num_labels == 1.")
        params = _params_seq(pooling_params, len(d1))
        _set_task(params, "classify")
        pairs = [runner.tokenize_pair(_text(a), _text(b), tokenization_kwargs)
                 for a, b in zip(d1, d2)]
        outs = runner.run([p[0] for p in pairs], params, _request_ids(llm, len(d1)),
                          [p[1] for p in pairs], use_tqdm=use_tqdm)
        return [ScoringRequestOutput.from_base(o) for o in outs]
    # bi-encoder: embed every distinct side once, cosine similarity per pair
    params = _params_seq(pooling_params, 1)[0]
    _set_task([params], "embed")
    ids = [runner.tokenize(x, tokenization_kwargs) for x in d1 + d2]
    embs = runner.run(ids, [params.clone() for _ in ids], _request_ids(llm, len(ids)),
                      use_tqdm=use_tqdm)
    n = len(d1)
    results = []
    for a, b in zip(embs[:n], embs[n:]):
        sim = F.cosine_similarity(a.outputs.data.float(), b.outputs.data.float(), dim=0)
        results.append(ScoringRequestOutput.from_base(PoolingRequestOutput(
            f"{a.request_id}_{b.request_id}", PoolingOutput(sim),
            a.prompt_token_ids + b.prompt_token_ids, 0, True)))
    return results


def _text(x) -> str:
    if isinstance(x, dict):
        if "prompt" not in x:
            raise ValueError("a cross-encoder scores text: give str or {'prompt': str} inputs.")
        return x["prompt"]
    return x
