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


def expand_use(tree: str) -> list[str]:
    """``a::{b, c::{d, e}}`` -> ``a::b``, ``a::c::d``, ``a::c::e``."""
    tree = re.sub(r"\s+", "", tree)
    if "{" not in tree:
        return [tree]
    head, _, rest = tree.partition("{")
    inner = rest[: rest.rindex("}")]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return [p for part in parts if part for p in expand_use(head + part)]


def rust_modules() -> dict[str, set[str]]:
    """Each module and the modules it names (by `use` or by path), at the granularity
    of files: `crate::`, `super::` and paths through a module's own children."""
    files = {module_of(p): p for p in SRC.rglob("*.rs")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        text = path.read_text().split("#[cfg(test)]")[0]  # tests may reach anywhere
        text = re.sub(r"//[^\n]*", "", text)
        here = module.split("::") if module else []
        parent = here[:-1]
        uses = re.finditer(r"\buse\s+([^;]+);", text)
        paths = [p for m in uses for p in expand_use(m.group(1))]
        paths += re.findall(r"\b(?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+", text)
        children = set(re.findall(r"\bmod\s+([a-z_][a-z0-9_]*)\s*;", text))
        paths += [
            m.group(0)
            for m in re.finditer(r"(?<![:\w])([a-z_][a-z0-9_]*)::", text)
            if m.group(1) in children
        ]
        named = set()
        for p in paths:
            segs = p.split("::")
            if segs[0] == "crate":
                base, segs = [], segs[1:]
            elif segs[0] == "super":
                base, segs = list(parent), segs[1:]
                while segs and segs[0] == "super":
                    base, segs = base[:-1], segs[1:]
            elif segs[0] == "self":
                base, segs = list(here), segs[1:]
            elif segs[0] in children:
                base = list(here)
            else:
                continue
            target = base
            for n in range(len(segs), -1, -1):
                candidate = "::".join(base + segs[:n])
                if candidate in files:
                    target = candidate.split("::") if candidate else []
                    break
            named.add("::".join(target))
        named.discard(module)
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
    """The same graph with each module folded into its top-level module (the crate's
    root, which only declares the Python module, left out)."""
    out: dict[str, set[str]] = {}
    for module, named in graph.items():
        if not module:
            continue
        top = module.split("::")[0]
        out.setdefault(top, set()).update(n.split("::")[0] for n in named if n)
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
    assert "backend" not in {n.split("::")[0] for n in graph["config::py"]}
    assert graph["flow"] == set(), graph["flow"]


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_source_file_outgrows_800_lines():
    sources = [*SRC.rglob("*.rs"), *(ROOT / "python" / "cachu").glob("*.py")]
    long = {
        str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > 800
    }
    assert not long


def test_redis_protocol_facts_are_not_repeated_in_python():
    for path in (ROOT / "python" / "cachu").glob("*.py"):
        text = path.read_text()
        assert '"lock:' not in text and "'lock:" not in text, path
        assert "struct.Struct" not in text and "unpack_from" not in text, path
