"""The import graph of first-party modules, read from the source (``ast``), not by importing:
every first-party module a start module reaches, function-level imports included, and the
top-level third-party module of each import. Imports guarded by ``except ImportError`` are
optional and left out."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
FIRST_PARTY = ("megatron_fork", "recipes", "checkpoints_convert", "tools")


def _source(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _guarded(node: ast.Try) -> bool:
    caught = {
        name.id
        for handler in node.handlers
        if handler.type is not None
        for name in ast.walk(handler.type)
        if isinstance(name, ast.Name)
    }
    return bool(caught & {"ImportError", "ModuleNotFoundError"})


def _imports(tree: ast.AST):
    """(module, names) of every import, outside ``try/except ImportError`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Try) and _guarded(node):
            stack += node.handlers + node.orelse + node.finalbody
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module, tuple(alias.name for alias in node.names)
        stack += ast.iter_child_nodes(node)


def _first_party_targets(module: str, names: tuple[str, ...]) -> list[str]:
    """The module, its parent packages and any submodule imported by ``from module import x``."""
    parts = module.split(".")
    found = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return found + [f"{module}.{n}" for n in names if _source(f"{module}.{n}")]


def third_party_imports(start: str) -> dict[str, str]:
    """Top-level third-party module -> the first-party module that imports it, over everything
    ``start`` reaches."""
    seen, todo, found = set(), [start], {}
    while todo:
        module = todo.pop()
        path = _source(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        for target, names in _imports(ast.parse(path.read_text())):
            top = target.split(".")[0]
            if top in FIRST_PARTY:
                todo += _first_party_targets(target, names)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, module)
    return found
