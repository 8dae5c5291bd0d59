"""A tiny stdlib linter: syntax (py_compile), unused imports, whitespace, line length.

Usage: python3 tools/lint.py [PATH ...]   (default: every .py under the service)
"""

from __future__ import annotations

import ast
import py_compile
import sys
from pathlib import Path

MAX_LINE = 120
ROOT = Path(__file__).resolve().parents[1]


def unused_imports(tree: ast.Module) -> list[tuple[int, str]]:
    imported: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imported[(alias.asname or alias.name).split(".")[0]] = node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            for alias in node.names:
                imported[alias.asname or alias.name] = node.lineno
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    exported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            exported |= {e.value for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant)}
    return sorted((line, name) for name, line in imported.items() if name not in used | exported)


def lint(path: Path) -> list[str]:
    problems: list[str] = []
    try:
        py_compile.compile(str(path), doraise=True, cfile=None)
    except py_compile.PyCompileError as err:
        return [f"{path}: syntax error: {err.msg}"]
    text = path.read_text(encoding="utf-8")
    if text.strip() and not text.startswith(('"""', "from __future__", "#")):
        problems.append(f"{path}:1: module should start with a docstring or comment")
    for number, line in enumerate(text.splitlines(), 1):
        if len(line) > MAX_LINE:
            problems.append(f"{path}:{number}: line too long ({len(line)} > {MAX_LINE})")
        if line != line.rstrip():
            problems.append(f"{path}:{number}: trailing whitespace")
        if "\t" in line:
            problems.append(f"{path}:{number}: tab character")
    for line, name in unused_imports(ast.parse(text)):
        problems.append(f"{path}:{line}: '{name}' imported but unused")
    return problems


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)
    problems = [problem for path in paths for problem in lint(path)]
    for problem in problems:
        print(problem)
    print(f"lint: {len(paths)} files, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
