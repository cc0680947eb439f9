"""The module import graph of solarbot's packages has no cycles, counting every import: at module
level, under ``TYPE_CHECKING`` and inside functions. (``bot.delivery`` and ``bot.intake`` once needed
each other, hidden behind ``TYPE_CHECKING``; adapters now depend on ``bot.delivery.IntakePort``.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bot", "adapters", "storage")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from bot import texts`` imports the module bot.texts; ``from bot.x import y``, bot.x.
            candidates = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_finder_sees_a_cycle_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_type_checking_and_function_level_imports() -> None:
    edges = graph()
    assert "bot.delivery" in edges["bot.intake"]
    assert "adapters.discord" in edges["bot.service"]  # imported inside platform_adapters
    assert "bot.texts" in edges["adapters.discord"]  # ``from bot import texts``


def test_no_import_cycle_among_solarbot_modules() -> None:
    assert cycles(graph()) == []


def test_adapters_reach_the_core_only_through_the_delivery_port() -> None:
    edges = graph()
    for name, targets in edges.items():
        if name.startswith("adapters."):
            assert "bot.intake" not in targets, f"{name} imports bot.intake: use IntakePort"


def test_the_delivery_contract_imports_without_the_intake_or_any_adapter() -> None:
    """In a fresh interpreter: importing ``bot.delivery`` loads neither ``bot.intake`` nor an
    adapter, and ``bot.intake`` then imports cleanly on top of it."""
    probe = (
        "import sys, bot.delivery; "
        "loaded = sorted(m for m in sys.modules if m == 'bot.intake' or m.startswith('adapters')); "
        "assert not loaded, loaded; import bot.intake"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


# Where no module may import another module's private (``_name``) names: the packages, the tests
# and the benchmarks. A private name is the module's own business; what others need is public.
SCANNED = ("bot", "adapters", "storage", "tests", "bench")


def private_imports() -> list[str]:
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom) or node.module is None:
                    continue
                root = node.module.split(".")[0]
                if root not in (*SCANNED, "bot") or node.level:
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        where = path.relative_to(ROOT)
                        found.append(f"{where}:{node.lineno} {node.module}.{alias.name}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports() == []
