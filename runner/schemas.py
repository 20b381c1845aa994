"""Structured-config schemas of a run: the dataclasses Hydra composes conf/ into.

Data flow: `register_configs(cs)` stores `RunConfig` in Hydra's ConfigStore as `run_schema`;
conf/config.yaml lists it first in its defaults, so every group YAML (model/, engine/,
sampling/, dataset/, task/: runner/tasks/config.py's TaskConfig) and every command-line
override merges into a typed node. A run has a dataset or a task, never both (the CLI drops
the dataset group when a task is chosen; runner/validation.py refuses both). An unknown key
(`dataset.promt_field=x`) or a value of the wrong type fails at compose time, before anything
runs. After composition the CLI turns the DictConfig into these dataclasses
(`OmegaConf.to_object`), and from there on only plain Python objects move: the engine gets one
EngineArgs built from ModelConfig + EngineConfig + the run seed (runner/backends/engine_args.py,
the only place that builds it), SamplingParams gets SamplingConfig's fields one to one.

EngineConfig mirrors runner.engine's EngineArgs: every EngineArgs field is either a ModelConfig
field (MODEL_ENGINE_FIELDS), the run's `seed`, or an EngineConfig field with the same default;
EngineConfig's other fields are the backend's (BACKEND_KEYS). tests/runner/test_engine_args.py
fails when a field is added to one side and not the other.

Rules that span fields (the sampling modes) are not expressible here; runner/validation.py
checks them with JSON Schemas.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from runner.tasks.config import TaskConfig


@dataclass
class GGUFSource:
    """A GGUF checkpoint shipped inside a Python package (or given as a path).

    The file is found with importlib.util.find_spec(package).origin, without importing the
    package; `path` names a .gguf file directly and wins over package/file.
    """

    package: Optional[str] = None
    file: Optional[str] = None
    path: Optional[str] = None


@dataclass
class ModelConfig:
    """Which weights and tokenizer to load: the model-identity arguments of LLM(...)."""

    name: str = MISSING  # short name used in run ids and summaries
    model: str = MISSING  # hub id, local folder, or path to a .gguf file
    # When set and resolvable, the GGUF file is loaded instead of `model` (offline default).
    gguf: Optional[GGUFSource] = None
    tokenizer: Optional[str] = None
    tokenizer_mode: str = "auto"
    trust_remote_code: bool = False
    dtype: str = "auto"
    quantization: Optional[str] = None
    revision: Optional[str] = None
    tokenizer_revision: Optional[str] = None
    max_model_len: Optional[int] = None
    # a PEFT LoRA adapter folder: every request runs with it (the engine's enable_lora turns on;
    # its path and files' sha256 go into manifest.json). Sweep adapters with -m model.lora=A,B
    lora: Optional[str] = None


@dataclass
class EngineConfig:
    """The remaining arguments of LLM(...) and its engine kwargs, with vLLM's defaults, plus
    which backend runs them (local engine or a remote OpenAI-compatible server)."""

    # local: runner.engine in this process (on Ray when data_parallel_size > 1) | remote: an
    # OpenAI-compatible server at `url` | ray: engine replicas as Ray actors, also for one
    backend: str = "local"
    skip_tokenizer_init: bool = False
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    # vLLM's name: this many engine replicas (each a tensor-parallel group) as Ray actors, fed
    # from one work queue; the `distributed` section says where Ray runs (docs/runner.md)
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    swap_space: float = 4  # GiB of CPU memory per GPU for swapped-out groups (n > 1, beams)
    # swap | recompute; null: groups of several sequences swap, single ones recompute
    preemption_mode: Optional[str] = None
    cpu_offload_gb: float = 0
    enforce_eager: Optional[bool] = None
    max_seq_len_to_capture: int = 8192
    disable_custom_all_reduce: bool = False
    disable_async_output_proc: bool = False
    async_scheduling: bool = True  # launch step k+1 before reading step k's tokens back
    max_num_seqs: int = 256
    max_num_batched_tokens: Optional[int] = None
    block_size: int = 16
    load_format: str = "auto"
    device: str = "auto"
    num_gpu_blocks_override: Optional[int] = None
    enable_chunked_prefill: Optional[bool] = None
    enable_prefix_caching: bool = True  # automatic prefix caching, on as in vLLM v1
    kv_cache_dtype: str = "auto"  # auto (the model's dtype) | fp8 | fp8_e4m3 | fp8_e5m2
    kernel_backend: str = "auto"  # auto (Triton on CUDA) | triton | torch (reference ops)
    distributed_timeout_s: float = 600.0  # tensor parallelism: a hung worker's error after this
    max_logprobs: int = 20
    download_dir: Optional[str] = None
    disable_log_stats: bool = False  # engine stats in run.log every 10 s (vLLM's EngineArgs default)
    runner: str = "auto"  # auto (from the architecture) | generate | pooling (vLLM 0.24)
    convert: str = "auto"  # auto | none | embed | classify
    # the model's generation defaults: auto (its generation_config.json) | vllm (none) | a folder
    generation_config: str = "auto"
    override_generation_config: Dict[str, Any] = field(default_factory=dict)
    hf_overrides: Dict[str, Any] = field(default_factory=dict)  # config.json attributes to set
    # an int (0: no torch.compile, the only mode here) or a dict: cudagraph_capture_sizes, ...
    compilation_config: Any = None
    # LoRA adapters (vLLM's names and defaults): slots per step, their rank, adapters kept in
    # host memory (null: max_loras)
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: Optional[int] = None
    # vLLM 0.24's: a torch trace of the whole run ({profiler: torch, torch_profiler_dir: DIR});
    # mode=embed's pooling ({pooling_type: MEAN, normalize: true, ...}); a run never puts the
    # engine to sleep, so enable_sleep_mode=true is refused
    profiler_config: Any = None
    pooler_config: Any = None
    enable_sleep_mode: bool = False
    # backend=remote (engine=remote): an OpenAI-compatible server instead of a local LLM
    url: Optional[str] = None
    api_key: Optional[str] = None  # null: $OPENAI_API_KEY; never written to a run folder
    served_model_name: Optional[str] = None
    max_concurrency: int = 32
    request_timeout: float = 600.0
    return_token_ids: bool = False
    remote_prompt: str = "token_ids"  # token_ids (exactly what the local engine runs) | text


@dataclass
class SamplingConfig:
    """SamplingParams' fields one to one (vLLM's names and defaults, legacy beam fields too)."""

    n: int = 1
    best_of: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # temperature, stop and max_tokens may be null: "the task's value". With a generate_until
    # task (runner/tasks/sampling.py) a null takes the task's generation_kwargs (temperature
    # from do_sample/temperature, stop from until, max_tokens from max_gen_toks) and a value
    # set here wins, as lm-eval's --gen_kwargs; with the dataset group null means
    # SamplingParams' own default for temperature and stop (1.0, []) and the dataset task's
    # answer length for max_tokens (runner/tasks/dataset_task.py: DEFAULT_MAX_TOKENS, 32).
    temperature: Optional[float] = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    # None: the runner derives one seed per item from the run seed and the item id, so a
    # sampled prediction does not depend on the batch it ran in (resume, reruns).
    seed: Optional[int] = None
    use_beam_search: bool = False
    length_penalty: float = 1.0
    early_stopping: Any = False  # True, False or "never" (OmegaConf has no Union of bool|str)
    stop: Optional[List[str]] = field(default_factory=list)
    stop_token_ids: List[int] = field(default_factory=list)
    ignore_eos: bool = False
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    skip_special_tokens: bool = True


@dataclass
class DatasetConfig:
    """Where prompts come from and how they are formatted (runner/datasets.py reads it)."""

    name: str = "custom"  # short name for run ids and summaries
    # builtin:NAME | jsonl:PATH | hf:NAME[:CONFIG[:SPLIT]] | hf:FILE.{json,jsonl,csv,parquet}
    source: str = "builtin:squad_mini"
    hf_config: Optional[str] = None
    split: Optional[str] = None
    preset: str = "auto"  # auto | squad | generic
    prompt_field: Optional[str] = None
    reference_field: Optional[str] = None
    id_field: Optional[str] = None
    # str.format over the row's fields; the escapes \n, \t and \\ are decoded (docs/runner.md)
    template: Optional[str] = None
    chat: bool = False
    system_prompt: Optional[str] = None
    shuffle: bool = False
    seed: int = 0
    metric: Optional[str] = None


class Mode(Enum):
    eval = "eval"  # generate, then score against the references
    generate = "generate"  # generate only (datasets without usable references)
    bench = "bench"  # the engine's throughput / latency / beam workload (runner/run/modes/bench.py)
    embed = "embed"  # similarity task with an embedding model (runner/run/modes/embed.py)


@dataclass
class BenchConfig:
    """mode=bench: vLLM's benchmark workloads on random token prompts (runner.engine_bench)."""

    workload: str = "throughput"  # throughput | latency | beam
    num_prompts: int = 1000  # throughput
    input_len: int = 256
    output_len: int = 256
    batch_size: int = 1  # latency
    warmup: int = 2  # latency
    iters: int = 5  # latency
    compare_eager: bool = False  # latency: also run enforce_eager=True (CUDA only)
    hf_num_prompts: int = 0  # throughput: run HF transformers generate on this many too
    hf_batch_size: int = 128
    beam_width: int = 4  # beam


@dataclass
class DistributedConfig:
    """Where data-parallel replicas run (engine.data_parallel_size > 1 or engine.backend=ray):
    runner/backends/ray_cluster.py connects, runner/backends/ray.py dispatches."""

    # null: the Ray instance this process already started, else a new local one (ray.init());
    # auto: the running cluster this node belongs to; ray://HOST:PORT: a cluster's Ray client
    ray_address: Optional[str] = None
    # Ray CPUs per replica; on a CPU device also its torch threads unless cpu_threads is set
    num_cpus_per_replica: float = 1
    # requests handed to one replica at a time (its engine's backlog); null: 2 x max_num_seqs
    replica_queue_size: Optional[int] = None
    # seconds of engine steps per call to a replica before its finished requests come back
    replica_call_s: float = 0.05
    # a replica not started by then (no free GPUs on the cluster) is an error, not a hang
    replica_start_timeout_s: float = 600.0


@dataclass
class RunConfig:
    """The whole run. Top-level keys are the run's identity and where its output goes."""

    model: ModelConfig = MISSING
    engine: EngineConfig = MISSING
    sampling: SamplingConfig = MISSING
    # The runner's own datasets (dataset=squad_mini | hf:... | jsonl:...); None when a task is
    # chosen (the CLI drops the group then: a run evaluates a task or a dataset, never both).
    dataset: Optional[DatasetConfig] = None
    # An lm-eval-format task or group (conf/task/, task=lmeval:FILE); None: the dataset group.
    task: Optional[TaskConfig] = None
    # The first N items of the task (lm-eval's --limit; of each task in a group); null: all.
    limit: Optional[int] = None
    experiment: str = "default"
    seed: int = 0
    mode: Mode = Mode.eval
    # The metric the run returns to Hydra's sweepers (optuna, nevergrad, ax); null: the mode's
    # primary metric (eval: the task's first metric, bench: total_tokens_per_s, embed: spearman).
    sweep_objective: Optional[str] = None
    # torch's CPU threads when the local engine runs on the CPU; null: OMP_NUM_THREADS when
    # set, else half the usable cores, at most 8 (README: why not torch's default).
    cpu_threads: Optional[int] = None
    bench: BenchConfig = field(default_factory=BenchConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    output_root: str = "outputs"
    # None: a fresh id from run_id_pattern. An existing run's id resumes that run.
    run_id: Optional[str] = None
    # Fields: {time} (YYYYmmdd-HHMMSS), {model}, {sampling}, {dataset}, {hash} (config hash, 8).
    run_id_pattern: str = "{time}_{model}_{sampling}_{hash}"
    # true: continue the newest unfinished run of this experiment with the same config hash.
    resume: bool = False
    use_tqdm: bool = True
    # Free-form labels copied into the manifest and the sweep summary.
    tags: Dict[str, str] = field(default_factory=dict)


GROUP_SCHEMAS = {
    "model": ModelConfig,
    "engine": EngineConfig,
    "sampling": SamplingConfig,
    "dataset": DatasetConfig,
    "task": TaskConfig,
}

# Keys that describe where and how a run is stored, not what it computes: they stay out of
# the config hash, so resuming or rerunning under another id or folder matches.
NON_RESULT_KEYS = ("experiment", "output_root", "run_id", "run_id_pattern", "resume",
                   "use_tqdm", "tags", "sweep_objective", "cpu_threads", "distributed")
# Engine keys that say where the one engine runs, not what it computes: a run on 2 replicas
# resumes on 1 (predictions do not depend on the batch an item ran in).
NON_RESULT_ENGINE_KEYS = ("data_parallel_size",)

# EngineArgs fields that come from the model group (the model identity of LLM(...)).
MODEL_ENGINE_FIELDS = ("model", "tokenizer", "tokenizer_mode", "trust_remote_code", "dtype",
                       "quantization", "revision", "tokenizer_revision", "max_model_len")
# EngineConfig fields that are the backend's, not EngineArgs': never passed to the engine.
BACKEND_KEYS = ("backend", "url", "api_key", "served_model_name", "max_concurrency",
                "request_timeout", "return_token_ids", "remote_prompt")
BACKENDS = ("local", "remote", "ray")


def register_configs(cs) -> None:
    """Store the run schema in Hydra's ConfigStore (`cs`), where conf/config.yaml finds it."""
    cs.store(name="run_schema", node=RunConfig)


def to_plain(obj: Any) -> Any:
    """Dataclasses/enums -> JSON-ready dicts and strings (for hashing, manifests, recipes)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
