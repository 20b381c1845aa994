"""Tests of runner.metrics: SQuAD EM/F1 and plain exact match against hand-computed values.

Every expected number below was worked out by hand from the v1.1 definitions (normalize, then
token multiset overlap), not by calling another implementation.
"""
from __future__ import annotations

import pytest

from runner.metrics import (
    METRICS, aggregate, get_metric, normalize_answer, score, squad_exact_match, squad_f1,
)


@pytest.mark.parametrize("text, expected", [
    ("The  Quick, brown fox!", "quick brown fox"),
    ("An apple a day", "apple day"),
    ("Theory of the mind", "theory of mind"),        # "the" inside a word stays
    ("U.S.A.", "usa"),
    ("the-end", "theend"),                            # punctuation goes first, so one token
    ("  in\n1887\t", "in 1887"),
    ("A", ""),
    ("", ""),
    ("ZÜRICH", "zürich"),
    ("“Hello”", "“hello”"),                           # non-ASCII punctuation is kept (v1.1)
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_ignores_case_articles_punctuation_whitespace():
    assert squad_exact_match("the Eiffel Tower.", "Eiffel Tower") == 1.0
    assert squad_exact_match("  eiffel   TOWER ", "The Eiffel Tower!") == 1.0
    assert squad_exact_match("Eiffel", "Eiffel Tower") == 0.0
    assert squad_exact_match("café", "cafe") == 0.0  # no accent folding


def test_f1_partial_overlap_by_hand():
    # pred [big, red, barn], ref [red, barn, door]: 2 common, P = R = 2/3, F1 = 2/3
    assert squad_f1("the big red barn", "a red barn door") == pytest.approx(2 / 3)
    # pred [in, may, 1931], ref [may, 1931]: P = 2/3, R = 1, F1 = 2*(2/3)/(5/3) = 0.8
    assert squad_f1("in May 1931", "May 1931") == pytest.approx(0.8)
    # repeated tokens count once per match: common min(3, 1) = 1, P = 1/3, R = 1, F1 = 0.5
    assert squad_f1("red red red", "red") == pytest.approx(0.5)
    # pred [a1, b, c, d] vs ref [b, c]: P = 2/4, R = 1, F1 = 2*0.5/1.5 = 2/3
    assert squad_f1("a1 b c d", "b c") == pytest.approx(2 / 3)
    assert squad_f1("x y", "z") == 0.0


def test_score_squad_is_max_over_references_on_0_100_scale():
    # vs "Paris": P = 1/2, R = 1 -> F1 2/3; vs "London": 0; EM 0 for both
    s = score("squad", "Paris France", ["London", "Paris"])
    assert s["exact_match"] == 0.0
    assert s["f1"] == pytest.approx(200 / 3)
    # EM comes from the second reference, F1 = 100 there as well
    s = score("squad", "Paris", ["the city of Paris", "paris."])
    assert s == {"exact_match": 100.0, "f1": 100.0}
    # the best EM and the best F1 may come from different references:
    # "1887" vs "in 1887" -> F1 = 2*(1)*(1/2)/(3/2) = 2/3; vs "1887 ad" -> also 2/3; EM 0 both
    s = score("squad", "1887", ["in 1887", "1887 AD"])
    assert s["exact_match"] == 0.0 and s["f1"] == pytest.approx(200 / 3)


def test_empty_prediction():
    assert score("squad", "", ["Ada Lovelace"]) == {"exact_match": 0.0, "f1": 0.0}
    assert score("squad", None, ["x"]) == {"exact_match": 0.0, "f1": 0.0}
    # both sides normalize to nothing: EM matches, F1 is 0 as in the v1.1 script
    assert score("squad", "", ["The"]) == {"exact_match": 100.0, "f1": 0.0}


def test_unicode():
    assert score("squad", "the Muñoz family", ["Muñoz family"])["exact_match"] == 100.0
    assert score("squad", "zürich", ["Zürich"])["exact_match"] == 100.0
    # curly quotes survive normalization, so the single tokens differ
    assert score("squad", "“Hello”", ["Hello"]) == {"exact_match": 0.0, "f1": 0.0}
    # pred [東京, tower] vs ref [東京]: P = 1/2, R = 1 -> F1 = 2/3
    assert score("squad", "東京 tower", ["東京"])["f1"] == pytest.approx(200 / 3)


def test_plain_exact_match_only_strips():
    assert score("exact_match", "  Paris\n", ["Paris"]) == {"exact_match": 100.0}
    assert score("exact_match", "paris", ["Paris"]) == {"exact_match": 0.0}
    assert score("exact_match", "Paris.", ["Paris"]) == {"exact_match": 0.0}
    assert score("exact_match", "4", ["four", " 4 "]) == {"exact_match": 100.0}


def test_aggregate_means_and_count():
    items = [{"exact_match": 100.0, "f1": 100.0}, {"exact_match": 0.0, "f1": 50.0},
             {"exact_match": 0.0, "f1": 0.0}]
    out = aggregate("squad", items)
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(50.0)
    assert out["num_items"] == 3
    assert aggregate("exact_match", [{"exact_match": 100.0}, {"exact_match": 0.0}]) == {
        "exact_match": 50.0, "num_items": 2}
    assert aggregate("squad", []) == {"exact_match": 0.0, "f1": 0.0, "num_items": 0}


def test_aggregate_of_scores_end_to_end():
    preds = [("1887", ["1887", "in 1887"]), ("in May", ["May 1931"]), ("nope", ["yes"])]
    out = aggregate("squad", [score("squad", p, r) for p, r in preds])
    # EM: 100, 0, 0 -> 33.33; F1: 100, [in,may] vs [may,1931] P=R=1/2 -> 50, 0 -> 50
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(50.0)


def test_errors():
    with pytest.raises(ValueError, match="known metrics: exact_match, squad"):
        score("bleu", "a", ["a"])
    with pytest.raises(ValueError, match="known metrics"):
        aggregate("rouge", [])
    with pytest.raises(ValueError, match="at least one reference"):
        score("squad", "a", [])
    with pytest.raises(TypeError):
        score("squad", "a", "a")
    with pytest.raises(ValueError, match="'f1'"):
        aggregate("squad", [{"exact_match": 1.0}])


def test_registry():
    assert set(METRICS) == {"squad", "exact_match"}
    assert get_metric("squad").keys == ("exact_match", "f1")
    assert get_metric("exact_match").keys == ("exact_match",)
