"""Property test of recipe loading (issue 25.4): arbitrary YAML documents, raw bytes and the
YAML constructs of the task-file tests (self-referencing aliases, alias bombs, documents deeper
than Python's stack, Python tags) either load as {"choices", "config"} or raise RecipeError,
one line naming the recipe; never another exception and never a hang."""
from __future__ import annotations

import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
import yaml

from runner.run.recipe import GROUPS, RECIPE_KEYS, RecipeError, load_recipe
from tests.fuzz import SIZES, fuzz
from tests.runner.test_fuzz_task_files import SNIPPETS, values

recipes = st.dictionaries(
    st.one_of(st.sampled_from(sorted(RECIPE_KEYS)), st.text(max_size=4)),
    st.one_of(values, st.dictionaries(st.one_of(st.sampled_from([*GROUPS, "hydra", "_target_",
                                                                 "defaults", "sweeper"]),
                                                st.text(max_size=3)), values, max_size=3)),
    max_size=4)


def _load(raw) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        if isinstance(raw, bytes):
            path.write_bytes(raw)
        elif isinstance(raw, str):
            path.write_text(raw)
        else:
            path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        try:
            doc = load_recipe(str(path))
        except RecipeError as e:
            assert "\n" not in str(e) and str(path) in str(e), str(e)[:300]
            return
        assert set(doc) == {"choices", "config"} and isinstance(doc["config"], dict)
        assert set(doc["choices"]) <= set(GROUPS)


@pytest.mark.timeout(120)
@SIZES
def test_any_recipe_loads_or_names_the_problem(size):
    fuzz(size, st.one_of(recipes, st.binary(max_size=48), st.sampled_from(SNIPPETS)), _load,
         fast=80, deadline_ms=1000)
