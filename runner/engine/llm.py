"""LLM: vLLM's offline entry point, with the same arguments, defaults and outputs.

    from runner.engine import LLM, SamplingParams
    llm = LLM(model="path/or/hub-id")
    outputs = llm.generate(["Hello, my name is"], SamplingParams(temperature=0.8, top_p=0.95))

generate() queues every prompt in the LLMEngine, steps it until all are finished (continuous
batching: the scheduler mixes prefills and decodes of all prompts) and returns the
RequestOutputs in the order of the prompts. chat() renders conversations with the chat
template (runner/engine/chat_utils.py) and hands the token ids to generate().

A pooling architecture (BertModel, BertForSequenceClassification, LlamaForSequenceClassification,
...) builds a PoolingRunner (runner/engine/pooling.py: no KV cache, no scheduler) instead of the
LLMEngine; embed/classify/score/reward/encode (runner/engine/pooling_api.py) run on it and
generate/chat/beam_search refuse it.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence, Union

from runner.engine.config import EngineArgs
from runner.engine.chat_utils import render_prompts
from runner.engine.engine_control import EngineControl
from runner.engine.inputs import PromptType, prompt_to_seq
from runner.engine.llm_engine import LLMEngine
from runner.engine import pooling_api
from runner.engine.outputs import BeamSearchOutput, BeamSearchSequence, RequestOutput
from runner.engine.pooler_config import PoolerConfig
from runner.engine.pooling import PoolingRunner
from runner.engine.profiler import ProfilerConfig
from runner.engine.sampling_params import BeamSearchParams, SamplingParams


class LLM:
    def __init__(self, model: str, tokenizer: Optional[str] = None, tokenizer_mode: str = "auto",
                 skip_tokenizer_init: bool = False, trust_remote_code: bool = False,
                 tensor_parallel_size: int = 1, dtype: str = "auto",
                 quantization: Optional[str] = None, revision: Optional[str] = None,
                 tokenizer_revision: Optional[str] = None, seed: int = 0,
                 gpu_memory_utilization: float = 0.9, swap_space: float = 4,
                 cpu_offload_gb: float = 0, enforce_eager: Optional[bool] = None,
                 max_seq_len_to_capture: int = 8192, disable_custom_all_reduce: bool = False,
                 disable_async_output_proc: bool = False, **kwargs) -> None:
        # vLLM's LLM logs no stats unless asked (EngineArgs' own default is to log them)
        kwargs.setdefault("disable_log_stats", True)
        unknown = set(kwargs) - EngineArgs.field_names()
        if unknown:
            hint = " (vLLM 0.24 has no `task`: use runner='generate' | 'pooling' and convert=)" \
                if "task" in unknown else ""
            raise TypeError(f"LLM() got unexpected engine arguments {sorted(unknown)}{hint}; "
                            "see runner.engine.EngineArgs for the supported ones.")
        engine_args = EngineArgs(
            model=model, tokenizer=tokenizer, tokenizer_mode=tokenizer_mode,
            skip_tokenizer_init=skip_tokenizer_init, trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size, dtype=dtype, quantization=quantization,
            revision=revision, tokenizer_revision=tokenizer_revision, seed=seed,
            gpu_memory_utilization=gpu_memory_utilization, swap_space=swap_space,
            cpu_offload_gb=cpu_offload_gb, enforce_eager=enforce_eager,
            max_seq_len_to_capture=max_seq_len_to_capture,
            disable_custom_all_reduce=disable_custom_all_reduce,
            disable_async_output_proc=disable_async_output_proc, **kwargs)
        # vLLM 0.24's profiler_config (start_profile / stop_profile), read by EngineControl;
        # pooler_config (pooling models: runner/engine/pooler_config.py); enable_sleep_mode
        profiler_config = ProfilerConfig.from_arg(engine_args.profiler_config)
        pooler_config = PoolerConfig.from_arg(engine_args.pooler_config)
        enable_sleep_mode = engine_args.enable_sleep_mode
        if not isinstance(enable_sleep_mode, bool):
            raise ValueError(f"enable_sleep_mode must be True or False, got "
                             f"{enable_sleep_mode!r}.")
        if isinstance(engine_args.data_parallel_size, int) and engine_args.data_parallel_size > 1:
            # vLLM's LLM refuses this too: one process holds one engine replica
            raise ValueError(
                f"LLM(data_parallel_size={engine_args.data_parallel_size}) is not supported in "
                "one process; run one LLM per replica (the runner does it on Ray: "
                "engine.data_parallel_size=N, docs/runner.md).")
        config = engine_args.create_configs()
        # exactly one of the two is set: the generative engine or the embedding (pooling) path
        self.llm_engine: Optional[LLMEngine] = None
        self.pooling_runner: Optional[PoolingRunner] = None
        if config.model_config.runner_type == "pooling":
            if config.cache_config.kv_cache_dtype != "auto":
                raise ValueError(
                    f"kv_cache_dtype={config.cache_config.kv_cache_dtype!r}: embedding models "
                    "keep no KV cache; use kv_cache_dtype='auto'.")
            self.pooling_runner = PoolingRunner(config, pooler_config)
        else:
            if pooler_config is not None:
                raise ValueError(f"pooler_config is for pooling models; "
                                 f"{config.model_config.architecture} is generative.")
            self.llm_engine = LLMEngine(config)
        self.model_name = model
        self.model_config = config.model_config
        self.request_counter = 0
        self.log_stats = not engine_args.disable_log_stats
        self._control = EngineControl(self, profiler_config, enable_sleep_mode)
        self.default_sampling_params: Optional[dict] = None    # read once, when first asked

    @property
    def is_embedding_model(self) -> bool:
        return self.pooling_runner is not None

    def _engine(self):
        return self.llm_engine if self.llm_engine is not None else self.pooling_runner

    def get_tokenizer(self):
        return self._engine().get_tokenizer()

    def set_tokenizer(self, tokenizer) -> None:
        """Use `tokenizer` from now on: for prompts, for output text and for each Logprob's
        decoded_token (vLLM's older API; 0.24 dropped it). Call it between generate() calls."""
        engine = self._engine()
        if hasattr(engine, "set_tokenizer"):
            engine.set_tokenizer(tokenizer)
        else:
            engine.tokenizer = tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """vLLM's: the SamplingParams that generate() uses when given none: the model's
        generation_config.json defaults (temperature, top_p, top_k, min_p,
        repetition_penalty, max_new_tokens as max_tokens) with override_generation_config on
        top, or SamplingParams() with generation_config='vllm'. A new object per call."""
        if self.default_sampling_params is None:
            self.default_sampling_params = self.model_config.get_diff_sampling_param()
        return SamplingParams(**self.default_sampling_params)

    def _check_generative(self, api: str) -> None:
        if self.pooling_runner is not None:
            raise ValueError(f"model {self.model_name!r} is an embedding model "
                             f"({self.pooling_runner.model_config.architecture}); {api}() needs "
                             "a generative model: use embed(), classify(), score() or encode().")

    # ------------------------------------------------------------------ generate
    def generate(self, prompts: Union[PromptType, Sequence[PromptType]],
                 sampling_params: Optional[Union[SamplingParams, Sequence[SamplingParams]]] = None,
                 use_tqdm: Union[bool, Callable] = True,
                 lora_request=None) -> list[RequestOutput]:
        """Prompts (runner/engine/inputs.py: str, TextPrompt, TokensPrompt, list[int], or a
        list of them) -> one RequestOutput each, in order. sampling_params=None uses
        get_default_sampling_params() (the model's generation_config.json), as vLLM does;
        use_tqdm may be a tqdm-like class or callable to build the progress bar with.
        `lora_request`: a LoRARequest for every prompt, or a list with one per prompt (None
        entries run the base model); needs enable_lora=True."""
        self._check_generative("generate")
        prompts = prompt_to_seq(prompts)
        if not prompts:
            raise ValueError("prompts is empty: give at least one prompt.")
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts; "
                                 "give one, or one per prompt.")
        return self._run_engine(self._add_requests(prompts, params, lora_request=lora_request),
                                use_tqdm)

    def _add_requests(self, prompts: list, params: list, lora_request=None,
                      **kwargs) -> list[str]:
        self._control.check_awake("generate")
        loras = _per_prompt(lora_request, len(prompts), "lora_request")
        ids = []
        try:
            for prompt, p, lora in zip(prompts, params, loras):
                rid = str(self.request_counter)
                if lora is not None:
                    kwargs["lora_request"] = lora
                else:
                    kwargs.pop("lora_request", None)
                self.llm_engine.add_request(rid, prompt, p, **kwargs)
                self.request_counter += 1
                ids.append(rid)
        except Exception:
            self.llm_engine.abort_request(ids)      # leave the engine as it was
            raise
        return ids

    def _run_engine(self, ids: list[str], use_tqdm: Union[bool, Callable]
                    ) -> list[RequestOutput]:
        engine = self.llm_engine
        order = {rid: i for i, rid in enumerate(ids)}
        results: list[Optional[RequestOutput]] = [None] * len(ids)
        bar = None
        if use_tqdm:
            # vLLM's: a callable use_tqdm (a tqdm class or a factory) builds the bar
            if callable(use_tqdm):
                make_bar = use_tqdm
            else:
                from tqdm.auto import tqdm as make_bar
            bar = make_bar(total=len(ids), desc="Processed prompts", dynamic_ncols=True,
                           postfix="est. speed input: 0.00 toks/s, output: 0.00 toks/s")
        start = time.perf_counter()
        in_toks = out_toks = 0
        streaming, engine.stream_outputs = engine.stream_outputs, False
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if not out.finished or out.request_id not in order:
                        continue
                    results[order[out.request_id]] = out
                    if bar is not None:
                        in_toks += len(out.prompt_token_ids)
                        out_toks += sum(len(c.token_ids) for c in out.outputs)
                        dt = time.perf_counter() - start
                        bar.postfix = (f"est. speed input: {in_toks / dt:.2f} toks/s, "
                                       f"output: {out_toks / dt:.2f} toks/s")
                        bar.update(1)
        except BaseException:
            engine.abort_request(list(engine.requests))
            engine.take_held_outputs()      # generate() returns nothing on an error
            raise
        finally:
            engine.stream_outputs = streaming
            if bar is not None:
                bar.close()
        return results

    # --------------------------------------------------------------- beam search
    def beam_search(self, prompts: Union[str, dict, Sequence[Union[str, dict]]],
                    params: BeamSearchParams, lora_request=None,
                    use_tqdm: bool = False) -> list[BeamSearchOutput]:
        """vLLM 0.24's beam search (runner/engine/beam_search_vllm.py) inside the engine: the
        beams of every prompt decode together, sharing their prompt's KV blocks. Returns, per
        prompt, a BeamSearchOutput of beam_width BeamSearchSequences, best first by
        length-penalized score; each holds all its tokens (prompt included, a final EOS kept),
        their text decoded with special tokens, each step's logprobs dict (the 2 * beam_width
        best tokens), cum_logprob, and finish_reason / stop_reason None, as vLLM's do.
        BeamSearchParams.include_stop_str_in_output shapes vLLM's server responses only: offline
        vLLM keeps a final EOS in `tokens` whatever its value, and so does this."""
        self._check_generative("beam_search")
        if not isinstance(params, BeamSearchParams):
            raise ValueError(f"params must be BeamSearchParams, got {type(params).__name__}.")
        prompts = prompt_to_seq(prompts)   # one prompt (a list[int] too) or several
        if not prompts:
            raise ValueError("prompts is empty: give at least one prompt.")
        # (the engine decodes nothing: the text is made below, from all the tokens)
        sp = SamplingParams(n=params.beam_width, temperature=1.0, max_tokens=params.max_tokens,
                            ignore_eos=params.ignore_eos, detokenize=False)
        ids = self._add_requests(prompts, [sp] * len(prompts), lora_request=lora_request,
                                 beam_params=params)
        outputs = self._run_engine(ids, use_tqdm)
        tok = self.get_tokenizer()
        results = []
        for out in outputs:
            seqs = []
            for c in out.outputs:
                tokens = list(out.prompt_token_ids) + list(c.token_ids)
                text = tok.decode(tokens) if tok is not None else None
                seqs.append(BeamSearchSequence(tokens=tokens, logprobs=list(c.logprobs or []),
                                               cum_logprob=c.cumulative_logprob, text=text))
            results.append(BeamSearchOutput(sequences=seqs))
        return results

    def reset_prefix_cache(self, reset_running_requests: bool = False,
                           reset_connector: bool = False) -> bool:
        """Forget every cached prefix (vLLM's): returns whether it was done, which needs that
        no request holds KV blocks (it is meant for between generate() calls)."""
        self._check_generative("reset_prefix_cache")
        if reset_running_requests or reset_connector:
            raise NotImplementedError(
                "reset_prefix_cache(reset_running_requests=True / reset_connector=True) is not "
                "supported: call it with no request running (there is no KV connector).")
        return self.llm_engine.reset_prefix_cache()

    # ---------------------------------------------------------------------- chat
    def chat(self, messages, sampling_params: Optional[Union[SamplingParams,
                                                              Sequence[SamplingParams]]] = None,
             use_tqdm: Union[bool, Callable] = True, chat_template: Optional[str] = None,
             add_generation_prompt: bool = True, continue_final_message: bool = False,
             tools: Optional[list[dict]] = None,
             chat_template_kwargs: Optional[dict] = None,
             lora_request=None) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of {"role", "content"} messages) or a
        list of conversations, rendered with the tokenizer's chat template or `chat_template`
        (a Jinja string or a file path); `tools` and `chat_template_kwargs` are passed to the
        template; "developer" messages become system ones for templates without that role.
        Returns one RequestOutput per conversation, in order."""
        self._check_generative("chat")
        prompts = render_prompts(self.get_tokenizer(), messages, chat_template,
                                 add_generation_prompt, continue_final_message, tools,
                                 chat_template_kwargs)
        return self.generate(prompts, sampling_params, use_tqdm, lora_request=lora_request)

    # ------------------------------------------------------------------- pooling
    # vLLM 0.24's pooling methods; their logic lives in runner/engine/pooling_api.py
    def encode(self, prompts, pooling_params=None, *, use_tqdm=True, lora_request=None,
               pooling_task: Optional[str] = None, tokenization_kwargs=None):
        """Pooled outputs (PoolingRequestOutput, data a tensor) for `pooling_task`
        ("embed" or "classify"; required, as in vLLM 0.24), one per prompt, in order."""
        return pooling_api.encode(self, prompts, pooling_params, use_tqdm=use_tqdm,
                                  lora_request=lora_request, pooling_task=pooling_task,
                                  tokenization_kwargs=tokenization_kwargs)

    def embed(self, prompts, *, use_tqdm=True, pooling_params=None, lora_request=None,
              tokenization_kwargs=None):
        """One EmbeddingRequestOutput per prompt (L2-normalized unless use_activation=False
        or the model folder's sentence-transformers modules have no Normalize)."""
        return pooling_api.embed(self, prompts, use_tqdm=use_tqdm,
                                 pooling_params=pooling_params, lora_request=lora_request,
                                 tokenization_kwargs=tokenization_kwargs)

    def classify(self, prompts, *, pooling_params=None, use_tqdm=True, lora_request=None,
                 tokenization_kwargs=None):
        """One ClassificationRequestOutput (class probabilities) per prompt."""
        return pooling_api.classify(self, prompts, pooling_params=pooling_params,
                                    use_tqdm=use_tqdm, lora_request=lora_request,
                                    tokenization_kwargs=tokenization_kwargs)

    def score(self, data_1, data_2, /, *, use_tqdm=True, pooling_params=None,
              lora_request=None, tokenization_kwargs=None, chat_template=None):
        """Similarity of each pair (1:1, 1:N or N:N): cosine of embeddings (bi-encoder) or a
        one-label classifier over the text pair (cross-encoder)."""
        return pooling_api.score(self, data_1, data_2, use_tqdm=use_tqdm,
                                 pooling_params=pooling_params, lora_request=lora_request,
                                 tokenization_kwargs=tokenization_kwargs,
                                 chat_template=chat_template)

    def reward(self, prompts, *, pooling_params=None, use_tqdm=True, lora_request=None,
               tokenization_kwargs=None):
        """A reward model's raw score per prompt (PoolingRequestOutput); see pooling_api."""
        return pooling_api.reward(self, prompts, pooling_params=pooling_params,
                                  use_tqdm=use_tqdm, lora_request=lora_request,
                                  tokenization_kwargs=tokenization_kwargs)

    # ------------------------------------------------------- workers and control
    # vLLM 0.24's engine control; the logic lives in runner/engine/engine_control.py
    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> "LLM":
        """An LLM from EngineArgs (vLLM's: every field becomes a keyword argument)."""
        return cls(**vars(engine_args))

    def collective_rpc(self, method, timeout: Optional[float] = None, args: tuple = (),
                       kwargs: Optional[dict] = None) -> list:
        """Call `method` (a worker method's name, or a callable taking the worker first) on
        every worker; one result per worker."""
        return self._control.collective_rpc(method, timeout, args, kwargs)

    def apply_model(self, func) -> list:
        """func(model) in every worker; one result per worker."""
        return self._control.apply_model(func)

    def start_profile(self, profile_prefix: Optional[str] = None) -> None:
        """Start the torch profiler (needs LLM(profiler_config={"profiler": "torch",
        "torch_profiler_dir": DIR}))."""
        self._control.start_profile(profile_prefix)

    def stop_profile(self) -> None:
        """Stop the profiler; its trace is written into torch_profiler_dir."""
        self._control.stop_profile()

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        """Level 0: pause; 1: weights to host memory, KV cache freed; 2: weights discarded too
        (after wake_up(["weights"]), collective_rpc("reload_weights"))."""
        self._control.sleep(level, mode)

    def wake_up(self, tags: Optional[list[str]] = None) -> None:
        """Bring back "weights", "kv_cache" and "scheduling" (all when tags is None)."""
        self._control.wake_up(tags)

    def get_metrics(self) -> list:
        """vLLM 0.24-style metrics (runner.engine.v1.metrics.reader); needs
        LLM(disable_log_stats=False), as vLLM's does."""
        from runner.engine.v1.metrics.reader import get_metrics_snapshot
        if not self.log_stats:
            raise RuntimeError("Stat logging disabled: build the LLM with "
                               "disable_log_stats=False to use get_metrics().")
        if self.llm_engine is None:
            raise NotImplementedError("get_metrics() on a pooling model is not supported (no "
                                      "scheduler): use a generative model.")
        return get_metrics_snapshot(self.llm_engine, self.model_name)


def _per_prompt(value, n: int, name: str) -> list:
    """One value for every prompt, or a list of one per prompt (vLLM's rule for
    lora_request)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"got {len(value)} {name}s for {n} prompts; give one, or one per "
                             "prompt.")
        return list(value)
    return [value] * n
