"""The shape of the code: Rust modules import each other without a cycle, no source
file outgrows 800 lines, and Redis protocol facts live in the Rust core alone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
USE = re.compile(r"\bcrate::((?:[a-z_][a-z0-9_]*)(?:::[a-z_][a-z0-9_]*)*)")


def module_of(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return "::".join(parts)


def rust_modules() -> dict[str, set[str]]:
    """Each module and the modules it names, at the granularity of files."""
    files = {module_of(p): p for p in SRC.rglob("*.rs")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        text = path.read_text()
        # Tests may reach anywhere.
        text = text.split("#[cfg(test)]")[0]
        named = set()
        for m in USE.finditer(text):
            parts = m.group(1).split("::")
            # The longest prefix that is a module of the crate.
            for n in range(len(parts), 0, -1):
                candidate = "::".join(parts[:n])
                if candidate in files:
                    named.add(candidate)
                    break
        # `super::x` names a sibling or the parent.
        for m in re.finditer(r"\bsuper::([a-z_][a-z0-9_]*)", text):
            parent = module.rsplit("::", 1)[0] if "::" in module else ""
            if path.name == "mod.rs":
                parent = module.rsplit("::", 1)[0] if "::" in module else ""
            sibling = f"{parent}::{m.group(1)}" if parent else m.group(1)
            named.add(sibling if sibling in files else parent)
        named.discard(module)
        named.discard("")
        graph[module] = named
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def top_level(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph with each module folded into its top-level module."""
    out: dict[str, set[str]] = {}
    for module, named in graph.items():
        top = module.split("::")[0]
        out.setdefault(top, set()).update(n.split("::")[0] for n in named)
        out[top].discard(top)
    return out


def test_rust_modules_import_each_other_without_a_cycle():
    graph = rust_modules()
    assert "flow" in graph and "function::sync" in graph, sorted(graph)
    assert find_cycle(graph) is None, find_cycle(graph)
    assert find_cycle(top_level(graph)) is None, find_cycle(top_level(graph))


def test_the_configuration_core_is_a_leaf():
    graph = rust_modules()
    assert graph["config"] <= {"errors"}, graph["config"]
    assert graph["flow"] == set(), graph["flow"]


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_source_file_outgrows_800_lines():
    sources = [*SRC.rglob("*.rs"), *(ROOT / "python" / "cachu").glob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > 800}
    assert not long


def test_redis_protocol_facts_are_not_repeated_in_python():
    for path in (ROOT / "python" / "cachu").glob("*.py"):
        text = path.read_text()
        assert '"lock:' not in text and "'lock:" not in text, path
        assert "struct.Struct" not in text and "unpack_from" not in text, path
