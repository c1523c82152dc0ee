"""The package layers, checked from the source: each package imports only the ones below it, nothing imports in a
circle, and no function grows past a page. An AST walk over every import, top-level or inside a function."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# lower number = lower layer; a package may import its own layer's modules and those of lower layers only.
# launch (hostfile, SLURM ids) needs only data_prep's error type.
LAYERS = {"data_prep": 0, "launch": 1, "analysis": 1, "trainer": 2, "study": 3, "odyssey": 4}
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    out = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports_of(path: Path, name: str) -> set[str]:
    """Every project module `name` imports, resolved to the longest known module name."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in LAYERS}


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {}
    for name, path in mods.items():
        targets = set()
        for imp in imports_of(path, name):
            while imp and imp not in mods:
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                targets.add(imp)
        edges[name] = targets
    return edges


def test_no_import_goes_up_a_layer():
    upward = [f"{src} imports {dst}" for src, dsts in graph().items() for dst in dsts
              if LAYERS[dst.split(".")[0]] > LAYERS[src.split(".")[0]]]
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def test_packages_of_one_layer_do_not_import_each_other():
    across = [f"{src} imports {dst}" for src, dsts in graph().items() for dst in dsts
              if src.split(".")[0] != dst.split(".")[0]
              and LAYERS[dst.split(".")[0]] == LAYERS[src.split(".")[0]]]
    assert not across, "\n".join(sorted(across))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    colour: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if colour.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in colour:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        colour[node] = 2
        return None

    for start in sorted(edges):
        if start not in colour:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_checks_see_a_cycle_and_an_upward_import():
    """The walk itself: a made-up graph with a cycle is caught, and a real upward import would be."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "trainer.train" in imports_of(ROOT / "study" / "runs.py", "study.runs") or \
        "trainer.state" in imports_of(ROOT / "study" / "runs.py", "study.runs")


def test_functions_fit_on_a_page():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
