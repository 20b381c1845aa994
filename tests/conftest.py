"""Shared pytest fixtures: tiny random models built once per session, CUDA skipping."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (the README's `-n 2`) each worker takes one core: torch and the runners the
# tests start in subprocesses use one thread, so two workers do not fight over the same cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


# Triton kernels run under the interpreter on machines without a GPU; the variable must be set
# before triton is first imported, so it is set here, before any test module loads.
if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """`factory(arch, **overrides) -> folder`, cached per (arch, overrides) for the session."""
    from tests.tiny_models import make_tiny_model

    cache: dict = {}

    def factory(arch: str = "llama", **kw) -> str:
        key = (arch, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = make_tiny_model(tmp_path_factory.mktemp(f"tiny_{arch}"), arch, **kw)
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory):
    return tiny_model_factory("llama")


# pooling models (LLM.embed / classify / score / reward): tiny BERTs and a Llama classifier
@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    from tests.tiny_models import make_tiny_bert
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), "model")


@pytest.fixture(scope="session")
def tiny_bert_classifier(tmp_path_factory):
    from tests.tiny_models import make_tiny_bert
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert_cls"), "seq_cls", num_labels=3)


@pytest.fixture(scope="session")
def tiny_bert_cross_encoder(tmp_path_factory):
    from tests.tiny_models import make_tiny_bert
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert_ce"), "seq_cls", num_labels=1)


@pytest.fixture(scope="session")
def tiny_llama_classifier(tmp_path_factory):
    from tests.tiny_models import make_tiny_llama_classifier
    return make_tiny_llama_classifier(tmp_path_factory.mktemp("tiny_llama_cls"), num_labels=1)


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_cuda = torch.cuda.is_available()
        n_gpu = torch.cuda.device_count()
    except Exception:
        has_cuda, n_gpu = False, 0
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
        if "multi_gpu" in item.keywords and n_gpu < 2:
            item.add_marker(pytest.mark.skip(reason="needs 2+ CUDA devices"))
