"""Metrics, aggregations, standard errors and filters against lm-eval 0.4.13's own functions
(imported from lm_eval as the reference) and hand-computed values."""
from __future__ import annotations

import math
import random

import pytest

from runner.tasks import metrics
from runner.tasks.filters import Pipeline
from runner.tasks.spec import MetricSpec

lm_metrics = pytest.importorskip("lm_eval.api.metrics")


def em_cases():
    return [
        (["The answer is 42.", "#### 1,000"], ["42", "The total is... #### 1000"],
         {"regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"], "ignore_case": True}),
        (["Paris!", "paris"], ["Paris", "PARIS"], {"ignore_case": True,
                                                   "ignore_punctuation": True}),
        (["room 101", "abc"], ["room 202", "ABC"], {"ignore_numbers": True}),
        (["x", "y "], ["x", "y"], {}),
    ]


@pytest.mark.parametrize("preds,refs,kw", em_cases())
def test_exact_match_equals_lmeval(preds, refs, kw):
    for p, r in zip(preds, refs):
        ref = lm_metrics.exact_match_hf_evaluate(predictions=[p], references=[r], **kw)
        assert metrics.exact_match([p], [r], **kw) == ref["exact_match"]


def test_aggregations_equal_lmeval():
    rnd = random.Random(3)
    lls = [-rnd.uniform(0.1, 5) for _ in range(40)]
    pairs = [(ll, rnd.randint(3, 30)) for ll in lls]
    assert metrics.aggregate("mean", lls) == lm_metrics.mean(lls)
    assert metrics.aggregate("median", lls) == lm_metrics.median(lls)
    assert math.isclose(metrics.aggregate("perplexity", lls), lm_metrics.perplexity(lls))
    assert math.isclose(metrics.aggregate("weighted_perplexity", pairs),
                        lm_metrics.weighted_perplexity(pairs))
    assert math.isclose(metrics.aggregate("bits_per_byte", pairs),
                        lm_metrics.bits_per_byte(pairs))
    binary = [(rnd.randint(0, 1), rnd.randint(0, 1)) for _ in range(50)]
    multi = [(rnd.randint(0, 3), rnd.randint(0, 3)) for _ in range(50)]
    assert math.isclose(metrics.aggregate("f1", binary), lm_metrics.f1_score(binary))
    assert math.isclose(metrics.aggregate("matthews_corrcoef", multi),
                        lm_metrics.matthews_corrcoef(multi))
    assert math.isclose(metrics.stderr("mean", lls, 100000), lm_metrics.mean_stderr(lls))
    assert metrics.stderr("mean", [1.0], 100000) is None
    assert metrics.stderr("weighted_perplexity", pairs, 100000) is None  # lm-eval: N/A


def _items(name):
    rnd = random.Random(name)
    if name == "perplexity":
        return [-rnd.uniform(0.5, 4) for _ in range(23)]
    if name == "median":
        return [rnd.uniform(0, 1) for _ in range(17)]
    if name == "f1":
        return [(rnd.randint(0, 1), rnd.randint(0, 1)) for _ in range(30)]
    return [(rnd.randint(0, 2), rnd.randint(0, 2)) for _ in range(25)]


@pytest.mark.parametrize("name", ["perplexity", "median", "f1", "matthews_corrcoef"])
def test_bootstrap_stderr_equals_lmeval(name, monkeypatch):
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")
    items = _items(name)
    fn = {"perplexity": lm_metrics.perplexity, "median": lm_metrics.median,
          "f1": lm_metrics.f1_score, "matthews_corrcoef": lm_metrics.matthews_corrcoef}[name]
    iters = 2000  # two chunks of 1000, each seeded Random(i)
    ref = lm_metrics.bootstrap_stderr(fn, items, iters)
    assert math.isclose(metrics.stderr(name, items, iters), ref, rel_tol=1e-9)


def test_group_metric_equals_lmeval():
    values, sizes, stderrs = [0.25, 0.5, 0.75], [10, 30, 5], [0.1, 0.05, 0.2]
    value, err = metrics.group_metric(values, sizes, stderrs, True)
    assert math.isclose(value, lm_metrics.aggregate_subtask_metrics(values, sizes, True))
    assert math.isclose(err, lm_metrics.pooled_sample_stderr(stderrs, sizes))
    value, err = metrics.group_metric(values, sizes, stderrs, False)
    assert math.isclose(value, lm_metrics.aggregate_subtask_metrics(values, sizes, False))
    assert math.isclose(err, lm_metrics.unweighted_mean_stderr(stderrs))
    assert metrics.group_metric(values, sizes, [0.1, None, 0.2], True)[1] is None


def test_squad_f1_by_hand():
    # normalized: "the cat sat" -> "cat sat"; "a cat sat down" -> "cat sat down"
    assert metrics.squad_f1("The cat sat.", "a cat sat down") == pytest.approx(2 * 1 * (2 / 3)
                                                                              / (1 + 2 / 3))
    assert metrics.squad_f1("Paris", "paris!") == 1.0
    assert metrics.squad_f1("", "paris") == 0.0
    assert metrics.squad_normalize("  The  Eiffel-Tower, an icon ") == "eiffeltower icon"
    values = metrics.score_generation("in 1872", ["1872", "in 1872"], True,
                                      [MetricSpec("f1", "mean", True, {})])
    assert values == {"f1": 1.0}


def test_score_choices_by_hand():
    specs = [MetricSpec(n, "mean", True, {}) for n in ("acc", "acc_norm", "acc_bytes",
                                                       "exact_match")]
    # raw argmax: "a" (-1.0); per character: "ccc" (-1.2 / 3 = -0.4) beats "a" (-1.0 / 1)
    out = metrics.score_choices([-1.0, -5.0, -1.2], [True, False, False], ["a", "bb", "ccc"],
                                2, specs)
    assert out == {"acc": 0.0, "acc_norm": 1.0, "acc_bytes": 1.0, "exact_match": 0}
    # a gold outside the choices scores 0 everywhere (lm-eval's -100)
    out = metrics.score_choices([-1.0, -2.0], [True, True], ["x", "y"], 5, specs)
    assert out == {"acc": 0.0, "acc_norm": 0.0, "acc_bytes": 0.0, "exact_match": 0}
    # several golds: any of them counts
    out = metrics.score_choices([-3.0, -1.0], [False, True], ["x", "y"], [0, 1], specs)
    assert out["acc"] == 1.0 and out["exact_match"] == 1


# --------------------------------------------------------------------------- filters

RESPONSES = [["The answer is 12.\n#### 12"], ["so 3,400 dollars"], ["no number here"],
             ["#### -7 then #### 8"], ["It is (B) clearly"], ["Answer: C"], ["  Mixed CASE  "]]
DOCS = [{"choices": ["red", "blue", "green"]} for _ in RESPONSES]
PIPELINES = [
    [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
     {"function": "take_first"}],
    [{"function": "regex", "group_select": -1,
      "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"}, {"function": "take_first"}],
    [{"function": "remove_whitespace"}, {"function": "lowercase"}, {"function": "take_first"}],
    [{"function": "uppercase"}, {"function": "take_first"}],
    [{"function": "multi_choice_regex", "regex_pattern": "\\(([A-Z])\\)",
      "ignore_case": True}, {"function": "take_first"}],
    [{"function": "map", "mapping_dict": {"no number here": "none"}, "default_value": "x"},
     {"function": "take_first"}],
]


@pytest.mark.parametrize("steps", PIPELINES, ids=[p[0]["function"] for p in PIPELINES])
def test_filters_equal_lmeval(steps):
    from lm_eval.filters import build_filter_ensemble

    components = [[s["function"], {k: v for k, v in s.items() if k != "function"}]
                  for s in steps]
    ensemble = build_filter_ensemble("x", components)
    resps = [list(r) for r in RESPONSES]
    for f in ensemble.filters:
        resps = f().apply(resps, DOCS)
    expected = list(resps)
    pipe = Pipeline("x", steps, "test")
    got = [pipe.apply(r, d)[0] for r, d in zip(RESPONSES, DOCS)]
    assert got == expected


def test_majority_vote_and_unmatched_flags():
    from lm_eval.filters.selection import MajorityVoteFilter

    resps = [["4", "5", "4"], ["a", "b", "b"], ["z"]]
    expected = list(MajorityVoteFilter().apply(resps, [{}] * 3))
    pipe = Pipeline("vote", [{"function": "majority_vote"}, {"function": "take_first"}], "t")
    assert [pipe.apply(r, {})[0] for r in resps] == [e[0] for e in expected]
    regex = Pipeline("r", [{"function": "regex", "regex_pattern": "(\\d+)"},
                           {"function": "take_first"}], "t")
    assert regex.apply(["x 3"], {}) == ("3", False)
    assert regex.apply(["nothing"], {}) == ("[invalid]", True)


def test_bootstrap_iters_zero_means_no_stderr():
    # lm-eval's --bootstrap_iters 0: no stderr for bootstrapped metrics (and none for means)
    assert metrics.stderr("perplexity", [-1.0, -2.0, -3.0], 0) is None
