"""The shape of src/latentstudy, measured from its syntax trees: modules and their lines, import
circles between modules (imports inside functions included), the longest function bodies and the
largest signatures. Prints figures; asserts nothing.

    .venv/bin/python scripts/code_shape.py [--top 8]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "latentstudy"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, name: str, known: set[str]) -> set[str]:
    """The package modules a module imports, anywhere in it."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = ".".join(name.split(".")[: -node.level] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def functions(tree: ast.AST, name: str) -> list[tuple[str, int, int]]:
    """(qualified name, body lines without the docstring, parameters) of every function."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
            lines = body[-1].end_lineno - body[0].lineno + 1
            a = node.args
            params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
            params += [p.arg for p in (a.vararg, a.kwarg) if p]
            out.append((f"{name}.{node.name}", lines, len(params)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    paths = sorted((SRC / PACKAGE).rglob("*.py"))
    trees = {module_name(p): (p, ast.parse(p.read_text())) for p in paths}
    known = set(trees)
    graph = {name: imports(tree, name, known) for name, (_, tree) in trees.items()}
    funcs = [f for name, (_, tree) in trees.items() for f in functions(tree, name)]
    sizes = sorted(((len(p.read_text().splitlines()), name) for name, (p, _) in trees.items()), reverse=True)
    print(f"modules: {len(trees)}, lines: {sum(n for n, _ in sizes)}; import circles: {len(circles(graph))}")
    for group in circles(graph):
        print("  circle: " + " -> ".join(group))
    print("largest modules: " + ", ".join(f"{name} {n}" for n, name in sizes[: args.top]))
    print("longest function bodies: " + ", ".join(f"{q} {n}" for q, n, _ in
                                                  sorted(funcs, key=lambda f: -f[1])[: args.top]))
    print("largest signatures: " + ", ".join(f"{q} {p}" for q, _, p in sorted(funcs, key=lambda f: -f[2])[: args.top]))


if __name__ == "__main__":
    main()
