"""`make demo RECIPE=name` finds each shipped recipe, and refuses an unknown one or a copy still tagged as its
original (its runs would be filed under the other task in MLflow)."""

from __future__ import annotations

import shutil

import pytest

from flows.demo import recipe_profile
from tests.pipeline.smoke_project import REPO_ROOT

SHIPPED = ("sentiment", "detox", "qa", "custom")


@pytest.mark.parametrize("recipe", SHIPPED)
def test_each_shipped_recipe_is_tagged_with_its_own_name(recipe):
    assert recipe_profile(recipe, REPO_ROOT / "recipes") == REPO_ROOT / "recipes" / recipe / "params.yaml"


def test_unknown_recipe_and_copied_tag_are_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"no recipe 'mytask' .* recipes: \[\]"):
        recipe_profile("mytask", tmp_path)
    shutil.copytree(REPO_ROOT / "recipes/custom", tmp_path / "mytask")
    with pytest.raises(SystemExit, match="set tracking.recipe to 'mytask' \\(it is 'custom'\\)"):
        recipe_profile("mytask", tmp_path)
