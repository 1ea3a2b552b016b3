"""The import layers of the house (issue 28), read from the source with `ast`.

    top         av_disentangle.run, .flags, .evaluation.*; train.py, evaluate.py
                (they join data and model; may import everything below)
    model       the rest of av_disentangle (features, layers, streams, losses, disentangle,
                model, export, supervised, ...): never imports pipelines
    data        pipelines.* (records, media, faces, prepare, input, the worlds): never imports
                the model library or the top
    foundation  av_disentangle (the package), .constants, .errors, .files, .logs, .corpora:
                TF-free, imports nothing of ours outside itself

Every import counts, the function-local ones too, so a local import cannot hide an upward
edge or a cycle. The only imports left out are those under `if __name__ == "__main__":` (the
file then runs as `__main__`, a module apart from the one its importers see).
"""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FOUNDATION = {"av_disentangle", "av_disentangle.constants", "av_disentangle.errors",
              "av_disentangle.files", "av_disentangle.logs", "av_disentangle.corpora"}
TOP_PREFIXES = ("av_disentangle.run", "av_disentangle.flags", "av_disentangle.evaluation",
                "train", "evaluate")
ALLOWED = {"foundation": {"foundation"}, "data": {"foundation", "data"},
           "model": {"foundation", "model"}, "top": {"foundation", "data", "model", "top"}}
HEAVY = ("tensorflow", "keras", "cv2", "av", "scipy")


def layer(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    if module.split(".")[0] == "pipelines":
        return "data"
    if any(module == p or module.startswith(p + ".") for p in TOP_PREFIXES):
        return "top"
    if module.startswith("av_disentangle."):
        return "model"
    raise ValueError(f"{module}: in no layer")


def modules() -> dict[str, str]:
    """Module name -> file of every module of the two packages and the two commands."""
    out = {"train": os.path.join(REPO, "train.py"), "evaluate": os.path.join(REPO, "evaluate.py")}
    for package in ("av_disentangle", "pipelines"):
        for folder, _, names in os.walk(os.path.join(REPO, package)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    out[module.removesuffix(".__init__")] = path
    return out


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imports(path: str, module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) of every import in `path`, outside a
    `__main__` guard; `from a import b` gives `a` and, where it is a module, `a.b`."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_main_guard(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([child.module] if child.module else []))
                found.append((base, child.lineno, top))
                found.extend((f"{base}.{a.name}", child.lineno, top) for a in child.names)
            else:
                # Module level stays module level inside if/try/with; a def or class body is not.
                visit(child, top and not isinstance(
                    child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)))

    visit(tree, True)
    return found


def import_graph() -> dict[str, set[str]]:
    """Our module -> our modules it imports (anywhere in the file)."""
    mods = modules()
    return {m: {t for t, _, _ in imports(p, m) if t in mods and t != m} for m, p in mods.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({layer(m)}) imports {t} ({layer(t)})"
                  for m, targets in graph.items() for t in targets
                  if layer(t) not in ALLOWED[layer(m)])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_module_is_in_a_layer():
    for module in modules():
        layer(module)


def test_no_import_climbs_a_layer():
    assert layer_violations(import_graph()) == []


def test_no_import_cycle_even_through_local_imports():
    assert cycles(import_graph()) == []


def test_the_checks_catch_a_planted_upward_import_and_a_planted_cycle():
    graph = import_graph()
    graph["pipelines.records"] = graph["pipelines.records"] | {"av_disentangle.model"}
    assert layer_violations(graph) == [
        "pipelines.records (data) imports av_disentangle.model (model)"]
    graph["av_disentangle.streams"] = graph["av_disentangle.streams"] | {"av_disentangle.model"}
    assert ["av_disentangle.model", "av_disentangle.streams"] in cycles(graph)
    graph["av_disentangle.files"] = {"pipelines.input"}
    assert "av_disentangle.files (foundation) imports pipelines.input (data)" in \
        layer_violations(graph)


def test_a_planted_local_import_is_read(tmp_path):
    path = tmp_path / "planted.py"
    path.write_text("import os\n\n\ndef f():\n    from av_disentangle import model\n\n\n"
                    "if __name__ == '__main__':\n    import pipelines.input\n")
    assert [(t, top) for t, _, top in imports(str(path), "pipelines.planted")] == [
        ("os", True), ("av_disentangle", False), ("av_disentangle.model", False)]


def test_no_function_local_import_of_pipelines_in_the_library():
    mods = modules()
    local = [f"{os.path.relpath(p, REPO)}:{line} imports {t}"
             for m, p in mods.items() if m.startswith("av_disentangle")
             for t, line, top in imports(p, m) if t.split(".")[0] == "pipelines" and not top]
    assert local == []


@pytest.mark.parametrize("module", sorted(FOUNDATION))
def test_the_foundation_imports_no_heavy_library_at_module_level(module):
    heavy = [t for t, _, top in imports(modules()[module], module)
             if top and t.split(".")[0] in HEAVY]
    assert heavy == []
