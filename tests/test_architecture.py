"""The layout holds: no import cycle in ``src/`` (imports inside functions count), modules and
functions stay small, and nothing cites a design file outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "splitft"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
DECLARATIVE = {
    # Tables written as code (argparse declarations, a summary record): long, not complex.
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere (functions and ``TYPE_CHECKING``
    blocks included: a cycle a type checker sees is a cycle in the design too)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    # Importing a.b.c runs a/__init__ and a/b/__init__ first; a module's own parents are already
    # running when it loads (a package may import its submodules), so they are no edge.
    for name, deps in graph.items():
        own_parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for dep in list(deps):
            parts = dep.split(".")
            deps.update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules)
        deps -= own_parents | {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_src() -> None:
    graph = import_graph()
    assert "splitft.recipes.train" in graph and "splitft.methods.split" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_recipe_imports_no_runtime_engine() -> None:
    """The runtime is picked by the layer above the recipe (``launch``), not by the recipe."""
    graph = import_graph()
    below_launch = {"splitft.recipes.train", "splitft.recipes.experiment", "splitft.methods.split"}
    for name in below_launch:
        reach, todo = set(), [name]
        while todo:
            for dep in graph[todo.pop()]:
                if dep not in reach:
                    reach.add(dep)
                    todo.append(dep)
        assert not {"splitft.runtime.flare", "splitft.runtime.flare_job", "splitft.launch"} & reach, name


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(SRC)}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                key = f"{path.relative_to(PACKAGE)}:{node.name}"
                if length > MAX_FUNCTION_LINES and key not in DECLARATIVE:
                    too_long.append(f"{key}: {length} lines")
    assert not too_long, "over the size limits:\n" + "\n".join(too_long)


def test_code_cites_no_design_file_outside_the_repo() -> None:
    cited = [str(p.relative_to(SRC)) for p in PACKAGE.rglob("*.py") if "design.md" in p.read_text()]
    assert not cited, f"cite docs/architecture.md instead: {cited}"


ARCHITECTURE = SRC.parent / "docs" / "architecture.md"


def _cited_in(text: str) -> set[str]:
    """Decision ids (``D3``, ``D2-D4`` expanded) and quoted section titles cited after
    ``architecture.md``."""
    cited: set[str] = set()
    for match in re.finditer(r"architecture\.md,?\s+(D\d+(?:-D\d+)?|\"[^\"]+\")", text):
        ref = match.group(1)
        if ref.startswith('"'):
            cited.add(ref.strip('"'))
        else:
            first, _, last = ref.partition("-")
            cited.update(f"D{n}" for n in range(int(first[1:]), int((last or first)[1:]) + 1))
    return cited


def test_every_citation_of_the_architecture_doc_exists() -> None:
    doc = ARCHITECTURE.read_text()
    decisions = set(re.findall(r"^\*\*(D\d+)\.", doc, flags=re.MULTILINE))
    sections = {line.lstrip("#").strip() for line in doc.splitlines() if line.startswith("## ")}
    assert decisions == {f"D{n}" for n in range(1, 16)}
    assert _cited_in('see docs/architecture.md, D2-D4 and docs/architecture.md, "One round"') == {
        "D2", "D3", "D4", "One round",
    }  # fmt: skip
    missing = {}
    for path in PACKAGE.rglob("*.py"):
        absent = _cited_in(" ".join(path.read_text().split())) - decisions - sections
        if absent:
            missing[str(path.relative_to(SRC))] = sorted(absent)
    assert not missing, f"cited but not in docs/architecture.md: {missing}"
