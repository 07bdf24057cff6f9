"""Structure rules of tierfs/ that code review alone lets slip (issue 15).

No module reads or writes another module's private names: `x._name` is
allowed only on `self`/`cls`, or where `_name` is defined in the same file
(classes of one module may share their internals). Third-party attributes
that are private by spelling only are listed with their reason.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2] / "tierfs"

#: attribute -> why reading it is not reaching into tierfs's own internals
THIRD_PARTY = {
    "_id": "a GridFS file's id: pymongo's documented GridIn/GridOut attribute",
}


def _defined_here(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def test_no_module_reaches_into_another_modules_privates():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text())
        own = _defined_here(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or name.startswith("__") or name in THIRD_PARTY or name in own:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {ast.unparse(node)}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("tierfs", ".")) or (
                    isinstance(node, ast.ImportFrom) and node.level):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: imports {alias.name}")
    assert not found, "private names used across modules:\n" + "\n".join(found)
