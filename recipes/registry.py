"""The recipes by name (``python -m recipes <name>``)."""

from collections.abc import Callable

from recipes.qwen3 import qwen3_8b, qwen3_14b, qwen3_32b
from recipes.qwen3_colocated import qwen3_8b_1node, qwen3_14b_2node
from recipes.recipe import Recipe
from recipes.tiny_qwen3_cpu import tiny_cpu

RECIPES: dict[str, Callable[[], Recipe]] = {
    "tiny_cpu": tiny_cpu,
    "qwen3_8b": qwen3_8b,
    "qwen3_14b": qwen3_14b,
    "qwen3_32b": qwen3_32b,
    "qwen3_8b_1node": qwen3_8b_1node,
    "qwen3_14b_2node": qwen3_14b_2node,
}


def build_recipe(name: str, overrides: list[str] = ()) -> Recipe:
    """The named recipe with ``overrides`` applied (unknown names and keys raise, listing the
    choices)."""
    if name not in RECIPES:
        raise KeyError(f"no recipe {name!r}: choose one of {sorted(RECIPES)}")
    return RECIPES[name]().with_overrides(list(overrides))


RECIPE_ERRORS = (KeyError, TypeError, ValueError)
"""What building and checking a recipe raises for bad input (names, types, values)."""


def error_message(error: Exception) -> str:
    """One line for a ``RECIPE_ERRORS`` error (a KeyError's str() would add quotes)."""
    return str(error.args[0] if isinstance(error, KeyError) and error.args else error)
