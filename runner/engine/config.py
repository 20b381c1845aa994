"""Engine configuration: LLM(...) keyword arguments -> validated config dataclasses.

`EngineArgs` holds every argument vLLM's `LLM` and its engine kwargs accept (the names and
defaults are vLLM's). `EngineArgs.create_configs()` validates them and resolves what depends on
the model: the local model folder (hub or GGUF), the HF config (with hf_overrides), the runner
(generate or pooling), the torch dtype, max_model_len, the generation_config folder and the
compilation_config's CUDA graph sizes. The helpers that read model files are
runner/engine/model_files.py's, compilation_config is runner/engine/compilation.py's, and the
command line of these fields is runner/engine/engine/arg_utils.py's. Every value this engine
does not support yet raises an error naming the argument; nothing is silently ignored.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from runner.engine.pooler_config import PoolerConfig  # noqa: F401  (vllm.config.PoolerConfig)
from runner.engine.compilation import resolve_compilation_config
from runner.engine.model_files import (_STR_TO_DTYPE, generation_config_folder, load_hf_config,
                                       read_generation_config, read_json, resolve_dtype,
                                       resolve_max_model_len, resolve_model_path,
                                       total_cpu_memory, weight_files_in)

logger = logging.getLogger("runner.engine")

_LOAD_FORMATS = ("auto", "safetensors", "pt", "dummy", "gguf")
_DEVICES = ("auto", "cpu", "cuda")
RUNNER_OPTIONS = ("auto", "generate", "pooling")      # vLLM 0.24's (no 'draft' model here)
CONVERT_OPTIONS = ("auto", "none", "embed", "classify")
# kv_cache_dtype -> the cache tensor's dtype (None: the model's). fp8 entries are stored unscaled
# (vLLM's default k_scale = v_scale = 1.0), saturating at the format's largest finite value.
KV_CACHE_DTYPES = {"auto": None, "fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
                    "fp8_e5m2": torch.float8_e5m2}


@dataclass
class ModelConfig:
    model: str                      # as the user gave it (hub id, folder or .gguf file)
    model_path: str                 # resolved local folder with config.json
    tokenizer: str
    tokenizer_mode: str
    trust_remote_code: bool
    dtype: torch.dtype
    seed: int
    revision: Optional[str]
    tokenizer_revision: Optional[str]
    max_model_len: int
    hf_config: Any
    load_format: str
    skip_tokenizer_init: bool
    weight_files: list = field(default_factory=list)   # the user's source weight files
    max_logprobs: int = 20
    quantization: Optional[str] = None   # resolved method (runner/engine/quantization/)
    cpu_offload_gb: float = 0            # GiB of weights kept in pinned CPU memory (CUDA)
    runner_type: str = "generate"        # resolved runner: 'generate' or 'pooling'
    # where the generation defaults come from: 'auto' (the model folder), 'vllm' (none) or a
    # folder; generation_config_path is the folder read (EOS ids come from it in every case)
    generation_config: str = "auto"
    generation_config_path: Optional[str] = None
    override_generation_config: dict = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        archs = getattr(self.hf_config, "architectures", None) or []
        return archs[0] if archs else "<none in config.json>"

    def try_get_generation_config(self) -> dict:
        """generation_config.json's non-default values ({} when there is none)."""
        return read_generation_config(self.generation_config_path or self.model_path)

    def get_diff_sampling_param(self) -> dict:
        """The default SamplingParams fields as vLLM derives them: generation_config.json's
        repetition_penalty, temperature, top_k, top_p, min_p and max_new_tokens (as max_tokens)
        unless generation_config='vllm', then override_generation_config on top."""
        config = {} if self.generation_config == "vllm" else self.try_get_generation_config()
        config.update(self.override_generation_config)
        keys = ("repetition_penalty", "temperature", "top_k", "top_p", "min_p",
                "max_new_tokens")
        diff = {k: config[k] for k in keys if config.get(k) is not None}
        if "max_new_tokens" in diff:
            diff["max_tokens"] = diff.pop("max_new_tokens")
        if diff and self.generation_config != "vllm":
            logger.info("default sampling parameters from %s: %s (generation_config='vllm' "
                        "uses SamplingParams' own)",
                        "the model's generation_config.json" if self.generation_config == "auto"
                        else self.generation_config, diff)
        return diff

    def eos_token_ids(self) -> list[int]:
        """Every EOS id the model lists, in order: config.json's eos_token_id, then those of
        generation_config.json (HF generate's source; Llama-3 Instruct lists <|eot_id|>
        there), each an int or a list. Empty when neither lists one."""
        ids: list[int] = []
        folder = self.generation_config_path or self.model_path
        sources = [getattr(self.hf_config, "eos_token_id", None),
                   read_json(os.path.join(folder, "generation_config.json")).get(
                       "eos_token_id")]
        for value in sources:
            for t in (value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(t, int) and not isinstance(t, bool) and t not in ids:
                    ids.append(t)
        return ids


@dataclass
class CacheConfig:
    block_size: int
    gpu_memory_utilization: float
    swap_space: float
    num_gpu_blocks_override: Optional[int]
    enable_prefix_caching: bool
    num_gpu_blocks: Optional[int] = None   # set by the model runner after sizing
    num_cpu_blocks: int = 0                # swap space per rank, in blocks (set with it)
    cache_dtype: Optional[torch.dtype] = None   # the KV cache's dtype (None: the model's)
    kv_cache_dtype: str = "auto"                # as the user gave it


@dataclass
class SchedulerConfig:
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    enable_chunked_prefill: bool
    # how a sequence group with several sequences (best_of > 1, beams) is preempted: its KV
    # blocks swapped to CPU memory ("swap", and None: the default) or dropped and computed
    # again ("recompute"); a single sequence is always recomputed
    preemption_mode: Optional[str] = None
    # LoRA (None: off): at most this many distinct adapters in one step
    max_loras: Optional[int] = None


@dataclass
class DeviceConfig:
    device: torch.device

    @property
    def device_type(self) -> str:
        return self.device.type


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    disable_custom_all_reduce: bool = False
    distributed_timeout_s: float = 600.0


@dataclass
class EngineConfig:
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    device_config: DeviceConfig
    parallel_config: ParallelConfig
    enforce_eager: bool
    max_seq_len_to_capture: int
    disable_async_output_proc: bool
    kernel_backend: str = "torch"     # resolved: 'triton' or 'torch'
    async_scheduling: bool = True
    lora_config: Optional[Any] = None   # runner/engine/lora/config.py LoRAConfig; None: off
    # decode batch sizes to capture as CUDA graphs (compilation_config's
    # cudagraph_capture_sizes); None: the engine's buckets (runner/engine/cuda_graphs.py)
    cudagraph_capture_sizes: Optional[list] = None
    log_stats: bool = False           # not disable_log_stats: periodic stats in the log


@dataclass
class EngineArgs:
    """vLLM's LLM(...) arguments plus the engine kwargs this engine understands."""
    model: str
    tokenizer: Optional[str] = None
    tokenizer_mode: str = "auto"
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    # vLLM's name and default: replicas of the engine, each a tensor-parallel group. One LLM is
    # one replica (LLM refuses > 1, as vLLM's does); the runner runs N of them on Ray.
    data_parallel_size: int = 1
    dtype: str = "auto"
    quantization: Optional[str] = None
    revision: Optional[str] = None
    tokenizer_revision: Optional[str] = None
    seed: int = 0
    gpu_memory_utilization: float = 0.9
    swap_space: float = 4
    cpu_offload_gb: float = 0
    enforce_eager: Optional[bool] = None
    max_seq_len_to_capture: int = 8192
    disable_custom_all_reduce: bool = False
    disable_async_output_proc: bool = False
    # engine kwargs
    async_scheduling: bool = True      # schedule step k+1 before reading step k's tokens
    max_model_len: Optional[int] = None
    max_num_seqs: int = 256
    max_num_batched_tokens: Optional[int] = None
    block_size: int = 16
    load_format: str = "auto"
    device: str = "auto"
    num_gpu_blocks_override: Optional[int] = None
    enable_chunked_prefill: Optional[bool] = None
    enable_prefix_caching: Optional[bool] = True    # vLLM v1: on; None means on too
    preemption_mode: Optional[str] = None   # 'swap' | 'recompute' (None: swap groups)
    kv_cache_dtype: str = "auto"
    max_logprobs: int = 20
    download_dir: Optional[str] = None
    disable_log_stats: bool = False   # vLLM's EngineArgs default; LLM() makes it True
    kernel_backend: str = "auto"      # 'auto' (Triton on CUDA), 'triton' or 'torch' (reference)
    # tensor parallelism: how long a collective may wait for the other ranks before the engine
    # declares a worker hung (a dead worker is reported at once)
    distributed_timeout_s: float = 600.0
    # LoRA adapters (vLLM's names and defaults; runner/engine/lora/)
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: Optional[int] = None
    # vLLM 0.24's model runner: 'auto' (from the architecture), 'generate' or 'pooling'; and
    # convert: 'auto', 'none', or adapting a model to a pooling task ('embed', 'classify')
    runner: str = "auto"
    convert: str = "auto"
    # generation defaults: 'auto' (the model's generation_config.json), 'vllm' (SamplingParams'
    # own) or a folder with a generation_config.json; override_generation_config on top
    generation_config: str = "auto"
    override_generation_config: dict = field(default_factory=dict)
    hf_overrides: Any = field(default_factory=dict)   # config.json attributes, or a callable
    # an int (vLLM's compilation mode: only 0, no torch.compile, runs here) or a dict with mode /
    # level, cudagraph_capture_sizes, max_cudagraph_capture_size, cudagraph_mode
    compilation_config: Optional[Any] = None
    # vLLM 0.24's: sleep() / wake_up() need enable_sleep_mode; profiler_config (a dict or
    # runner.engine.profiler.ProfilerConfig) for start_profile / stop_profile; pooler_config
    # (a dict or runner.engine.pooler_config.PoolerConfig) for pooling models. LLM reads them.
    enable_sleep_mode: bool = False
    profiler_config: Optional[Any] = None
    pooler_config: Optional[Any] = None

    @classmethod
    def field_names(cls) -> set:
        return {f.name for f in dataclasses.fields(cls)}

    @staticmethod
    def add_cli_args(parser):
        """vLLM's: one command-line option per field (runner/engine/engine/arg_utils.py);
        returns the parser."""
        from runner.engine.engine.arg_utils import add_engine_cli_args
        return add_engine_cli_args(parser)

    @classmethod
    def from_cli_args(cls, args) -> "EngineArgs":
        """vLLM's: the fields an argparse Namespace (from add_cli_args) has; others are left
        at their defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: getattr(args, name) for name in names if hasattr(args, name)})

    # ---------------------------------------------------------------- validation
    def _check_unsupported(self) -> None:
        if (not isinstance(self.tensor_parallel_size, int)
                or isinstance(self.tensor_parallel_size, bool) or self.tensor_parallel_size < 1):
            raise ValueError(f"tensor_parallel_size must be an integer >= 1, got "
                             f"{self.tensor_parallel_size!r}.")
        if (not isinstance(self.data_parallel_size, int)
                or isinstance(self.data_parallel_size, bool) or self.data_parallel_size < 1):
            raise ValueError(f"data_parallel_size must be an integer >= 1, got "
                             f"{self.data_parallel_size!r}.")
        if not isinstance(self.async_scheduling, bool):
            raise ValueError(f"async_scheduling must be True or False, got "
                             f"{self.async_scheduling!r}.")
        if self.pipeline_parallel_size != 1:
            raise NotImplementedError(
                f"pipeline_parallel_size={self.pipeline_parallel_size} is not supported "
                "(only 1).")
        if self.enable_prefix_caching not in (None, True, False):
            raise ValueError(f"enable_prefix_caching must be True, False or None (on), got "
                             f"{self.enable_prefix_caching!r}.")
        if self.tokenizer_mode not in ("auto", "hf", "slow"):
            raise NotImplementedError(
                f"tokenizer_mode={self.tokenizer_mode!r} is not supported; use 'auto' or 'hf' "
                "(the fast HF tokenizer when there is one) or 'slow'.")
        if self.runner not in RUNNER_OPTIONS:
            raise ValueError(f"runner must be one of {list(RUNNER_OPTIONS)}, got "
                             f"{self.runner!r}.")
        if self.convert not in CONVERT_OPTIONS:
            raise ValueError(f"convert must be one of {list(CONVERT_OPTIONS)}, got "
                             f"{self.convert!r}.")
        if self.override_generation_config is not None and not isinstance(
                self.override_generation_config, dict):
            raise ValueError(f"override_generation_config must be a dict, got "
                             f"{type(self.override_generation_config).__name__}.")
        if not isinstance(self.max_logprobs, int) or isinstance(self.max_logprobs, bool) or \
                self.max_logprobs < -1:
            raise ValueError(f"max_logprobs must be an int >= 0, or -1 (no limit), got "
                             f"{self.max_logprobs!r}.")

    def _check_values(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty string, got {self.model!r}.")
        if not 0.0 < float(self.gpu_memory_utilization) <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1], got "
                             f"{self.gpu_memory_utilization}.")
        if self.block_size not in (1, 2, 4, 8, 16, 32, 64, 128):
            raise ValueError(f"block_size must be a power of two from 1 to 128, got "
                             f"{self.block_size}.")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}.")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got "
                             f"{self.max_num_batched_tokens}.")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ValueError(f"num_gpu_blocks_override must be >= 1, got "
                             f"{self.num_gpu_blocks_override}.")
        if self.load_format not in _LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {list(_LOAD_FORMATS)}, got "
                             f"{self.load_format!r}.")
        if self.device not in _DEVICES:
            raise ValueError(f"device must be one of {list(_DEVICES)}, got {self.device!r}.")
        if not isinstance(self.dtype, torch.dtype) and str(self.dtype).lower() not in (
                "auto", *_STR_TO_DTYPE):
            raise ValueError(f"dtype must be one of ['auto', 'half', 'float16', 'bfloat16', "
                             f"'float', 'float32'], got {self.dtype!r}.")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {list(KV_CACHE_DTYPES)}, got "
                             f"{self.kv_cache_dtype!r}.")
        if self.kernel_backend not in ("auto", "triton", "torch"):
            raise ValueError(f"kernel_backend must be one of ['auto', 'triton', 'torch'], got "
                             f"{self.kernel_backend!r}.")
        if not float(self.distributed_timeout_s) > 0:
            raise ValueError("distributed_timeout_s must be > 0, got "
                             f"{self.distributed_timeout_s}.")
        if isinstance(self.cpu_offload_gb, bool) or not isinstance(
                self.cpu_offload_gb, (int, float)) or self.cpu_offload_gb < 0:
            raise ValueError(f"cpu_offload_gb must be a number >= 0, got "
                             f"{self.cpu_offload_gb!r}.")
        self._check_swap_space()
        if self.preemption_mode not in (None, "swap", "recompute"):
            raise ValueError(f"preemption_mode must be 'swap', 'recompute' or None, got "
                             f"{self.preemption_mode!r}.")
        if self.max_seq_len_to_capture < 1:
            raise ValueError("max_seq_len_to_capture must be >= 1, got "
                             f"{self.max_seq_len_to_capture}.")

    def _check_swap_space(self) -> None:
        """swap_space: GiB of CPU memory per GPU (per tensor-parallel rank) for swapped-out
        sequence groups; all ranks' together must fit in the machine's memory."""
        if isinstance(self.swap_space, bool) or not isinstance(self.swap_space, (int, float)) \
                or self.swap_space < 0:
            raise ValueError(f"swap_space must be a number of GiB >= 0, got "
                             f"{self.swap_space!r}.")
        total = total_cpu_memory()
        want = float(self.swap_space) * 2**30 * max(1, int(self.tensor_parallel_size))
        if total and want > total:
            raise ValueError(
                f"swap_space={self.swap_space} GiB per GPU x {self.tensor_parallel_size} "
                f"= {want / 2**30:.1f} GiB is more than this machine's memory "
                f"({total / 2**30:.1f} GiB); lower swap_space.")
        if total and want > 0.4 * total:
            logger.warning("swap_space takes %.1f GiB of the machine's %.1f GiB of memory",
                           want / 2**30, total / 2**30)

    # ------------------------------------------------------------ resolution
    def create_configs(self) -> EngineConfig:
        self._check_values()
        self._check_unsupported()
        device = self._resolve_device()
        model_path, weight_files, load_format = resolve_model_path(
            self.model, self.revision, self.load_format, self.download_dir)
        hf_config = load_hf_config(model_path, self.trust_remote_code, self.hf_overrides)
        runner_type = resolve_runner(self.runner, self.convert, hf_config)
        gen_folder = generation_config_folder(model_path, self.generation_config)
        dtype = resolve_dtype(self.dtype, hf_config, device)
        from runner.engine.quantization import resolve_quantization
        quantization = resolve_quantization(
            self.quantization, hf_config,
            is_gguf=bool(weight_files) and str(weight_files[0]).endswith(".gguf"))
        if self.tensor_parallel_size > 1:
            from runner.engine.distributed import verify_tensor_parallel
            from runner.engine.models import get_model_class, is_embedding_model
            if is_embedding_model(hf_config):
                raise NotImplementedError(
                    f"tensor_parallel_size={self.tensor_parallel_size}: embedding models run on "
                    "one device; use tensor_parallel_size=1.")
            verify_tensor_parallel(self.tensor_parallel_size, hf_config, device,
                                   get_model_class(hf_config))
        max_model_len = resolve_max_model_len(hf_config, self.max_model_len)
        tokenizer = self.tokenizer or model_path
        if self.tokenizer is not None and os.path.isfile(self.tokenizer) and \
                self.tokenizer.endswith(".gguf"):
            from runner.engine.gguf_loader import gguf_to_hf_dir
            tokenizer = gguf_to_hf_dir(self.tokenizer)
        model_config = ModelConfig(
            model=self.model, model_path=model_path, tokenizer=tokenizer,
            tokenizer_mode=self.tokenizer_mode, trust_remote_code=self.trust_remote_code,
            dtype=dtype, seed=self.seed, revision=self.revision,
            tokenizer_revision=self.tokenizer_revision, max_model_len=max_model_len,
            hf_config=hf_config, load_format=load_format,
            skip_tokenizer_init=self.skip_tokenizer_init, weight_files=weight_files,
            max_logprobs=self.max_logprobs, quantization=quantization,
            cpu_offload_gb=float(self.cpu_offload_gb), runner_type=runner_type,
            generation_config=self.generation_config, generation_config_path=gen_folder,
            override_generation_config=dict(self.override_generation_config or {}))
        chunked = True if self.enable_chunked_prefill is None else bool(self.enable_chunked_prefill)
        max_batched = self.max_num_batched_tokens
        if max_batched is None:
            max_batched = 8192 if chunked else max(max_model_len, 8192)
        if not chunked and max_batched < max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({max_batched}) is smaller than max_model_len "
                f"({max_model_len}) with enable_chunked_prefill=False: a long prompt could never "
                "be scheduled. Raise max_num_batched_tokens, lower max_model_len, or enable "
                "chunked prefill.")
        if max_batched < self.max_num_seqs and max_batched < max_model_len:
            logger.info("max_num_batched_tokens=%d < max_num_seqs=%d: at most %d sequences "
                        "decode per step.", max_batched, self.max_num_seqs, max_batched)
        enforce_eager = bool(self.enforce_eager) if self.enforce_eager is not None else False
        if self.cpu_offload_gb and device.type != "cuda":
            logger.warning("cpu_offload_gb=%s: the weights are in CPU memory already on device "
                           "%r; nothing is offloaded.", self.cpu_offload_gb, device.type)
        elif self.cpu_offload_gb and not enforce_eager:
            # the offloaded layers' stream hooks cannot be frozen into CUDA graphs
            logger.warning("cpu_offload_gb=%s streams weights between layers: CUDA graphs are "
                           "off (enforce_eager=True).", self.cpu_offload_gb)
            enforce_eager = True
        capture_sizes, graphs_off = resolve_compilation_config(self.compilation_config,
                                                               self.max_num_seqs)
        if graphs_off and not enforce_eager:
            logger.info("compilation_config turns CUDA graphs off: eager decode steps")
            enforce_eager = True
        kernel_backend = self._resolve_kernel_backend(device)
        lora_config = self._resolve_lora_config(hf_config)
        cache_dtype = self._resolve_cache_dtype(dtype, device, kernel_backend)
        return EngineConfig(
            model_config=model_config,
            cache_config=CacheConfig(
                block_size=self.block_size, gpu_memory_utilization=self.gpu_memory_utilization,
                swap_space=self.swap_space, num_gpu_blocks_override=self.num_gpu_blocks_override,
                enable_prefix_caching=self.enable_prefix_caching is not False,
                cache_dtype=cache_dtype,
                kv_cache_dtype=self.kv_cache_dtype),
            scheduler_config=SchedulerConfig(
                max_num_batched_tokens=max_batched, max_num_seqs=self.max_num_seqs,
                max_model_len=max_model_len, enable_chunked_prefill=chunked,
                preemption_mode=self.preemption_mode,
                max_loras=lora_config.max_loras if lora_config else None),
            device_config=DeviceConfig(device),
            parallel_config=ParallelConfig(self.tensor_parallel_size, self.pipeline_parallel_size,
                                           self.disable_custom_all_reduce,
                                           float(self.distributed_timeout_s)),
            enforce_eager=enforce_eager, max_seq_len_to_capture=self.max_seq_len_to_capture,
            disable_async_output_proc=self.disable_async_output_proc,
            async_scheduling=self.async_scheduling,
            kernel_backend=kernel_backend, lora_config=lora_config,
            cudagraph_capture_sizes=capture_sizes, log_stats=not self.disable_log_stats)

    def _resolve_lora_config(self, hf_config):
        from runner.engine.lora.config import resolve_lora_config
        lora_config = resolve_lora_config(self.enable_lora, self.max_loras, self.max_lora_rank,
                                          self.max_cpu_loras)
        if lora_config is None:
            return None
        if self.tensor_parallel_size > 1:
            raise NotImplementedError(
                f"enable_lora=True with tensor_parallel_size={self.tensor_parallel_size} is not "
                "supported yet (adapters run on one device); use tensor_parallel_size=1.")
        from runner.engine.models import get_model_class, is_embedding_model
        if is_embedding_model(hf_config):
            raise NotImplementedError("enable_lora=True: LoRA adapters for embedding models "
                                      "are not supported; use enable_lora=False.")
        model_class = get_model_class(hf_config)
        if not getattr(model_class, "supported_lora_modules", None):
            raise NotImplementedError(
                f"enable_lora=True: {model_class.__name__} has no LoRA support yet (the Llama "
                "family has: Llama, Mistral, Qwen2, Qwen3); use enable_lora=False.")
        if self.cpu_offload_gb:
            raise NotImplementedError("enable_lora=True with cpu_offload_gb > 0 is not "
                                      "supported; use cpu_offload_gb=0.")
        return lora_config

    def _resolve_cache_dtype(self, dtype: torch.dtype, device: torch.device,
                             kernel_backend: str) -> torch.dtype:
        cache_dtype = KV_CACHE_DTYPES[self.kv_cache_dtype] or dtype
        if cache_dtype.itemsize == 1 and device.type == "cuda" and kernel_backend == "triton":
            index = device.index if device.index is not None else torch.cuda.current_device()
            capability = torch.cuda.get_device_capability(index)
            if capability < (8, 9):
                raise ValueError(
                    f"kv_cache_dtype={self.kv_cache_dtype!r} needs a GPU with fp8 support "
                    f"(compute capability 8.9 or newer: Ada, Hopper); this one has "
                    f"{capability[0]}.{capability[1]}. Use kv_cache_dtype='auto'.")
        return cache_dtype

    def _resolve_kernel_backend(self, device: torch.device) -> str:
        if self.kernel_backend == "torch" or (self.kernel_backend == "auto"
                                              and device.type != "cuda"):
            return "torch"
        try:
            import triton  # noqa: F401
        except ImportError:
            if self.kernel_backend == "triton":
                raise ValueError("kernel_backend='triton' needs the triton package; install "
                                 "it or use kernel_backend='torch'.") from None
            logger.warning("triton is not installed: running the torch reference ops on CUDA")
            return "torch"
        return "triton"

    def _resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but no CUDA device is visible; use "
                             "device='cpu' or 'auto'.")
        return torch.device(self.device)


def resolve_runner(runner: str, convert: str, hf_config) -> str:
    """vLLM 0.24's runner / convert -> the runner this model runs on: 'generate' (the LLMEngine)
    or 'pooling' (an encoder's PoolingRunner). 'auto' follows the architecture; a choice the
    model cannot take raises naming it."""
    from runner.engine.models import is_embedding_model
    native = "pooling" if is_embedding_model(hf_config) else "generate"
    arch = (getattr(hf_config, "architectures", None) or ["<none>"])[0]
    if convert in ("embed", "classify") and native == "generate":
        raise NotImplementedError(
            f"convert={convert!r}: adapting the generative model {arch} to a pooling task is "
            "not supported; give an embedding model (an encoder such as BertModel).")
    if convert == "classify":
        raise NotImplementedError(
            f"convert='classify' is not supported for {arch}; use convert='auto'.")
    wanted = "pooling" if runner == "auto" and convert == "embed" else runner
    if wanted not in ("auto", native):
        need = "a decoder (generate, chat)" if wanted == "generate" else \
            "an encoder such as BertModel (encode)"
        raise ValueError(f"runner={runner!r} needs {need}; {arch} runs as runner={native!r}.")
    return native
