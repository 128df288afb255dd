"""Two builds of cachu side by side: the memory benchmark run for each in turn, several
rounds, reporting each row of cachu as its ratio to functools.lru_cache of the same
run (the machine is noisy: ratios of one run compare, raw times across runs do not).

    python benches/ab.py /path/to/before /path/to/after [rounds]

Each path is a directory holding a `cachu` package (a copy of `python/cachu` with its
built extension). Prints the spread (min-max) of each ratio over the rounds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).with_name("bench_memory.py")
ROW = re.compile(r"^(cachu(?: no-copy)?|lru_cache)\s+(.*)$")
FILE_ROW = re.compile(r"^cachu file\s+([\d.]+) \(([\d.]+)x diskcache\)\s+([\d.]+) \(([\d.]+)x")


def run(build: str) -> dict[str, list[float]]:
    env = dict(os.environ, PYTHONPATH=build)
    out = subprocess.run(
        [sys.executable, str(BENCH)], env=env, capture_output=True, text=True, check=True
    ).stdout
    rows: dict[str, list[float]] = {}
    for line in out.splitlines():
        if m := FILE_ROW.match(line):
            rows["file vs diskcache"] = [float(m.group(2)), float(m.group(4))]
        elif m := ROW.match(line):
            cells = re.findall(r"([\d.]+)( M)? \(\s*[\d.]+x\)", m.group(2))
            rows[m.group(1)] = [float(v) * (1e6 if mega else 1) for v, mega in cells]
    return rows


def main() -> None:
    before, after = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    columns = ["hit", "kwargs hit", "miss+store", "2-thread hits/s"]
    ratios: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(rounds):
        for name, build in (("before", before), ("after", after)):
            rows = run(build)
            base = rows["lru_cache"]
            for row in ("cachu", "cachu no-copy"):
                for i, col in enumerate(columns):
                    ratio = rows[row][i] / base[i] if i < 3 else base[i] / rows[row][i]
                    ratios.setdefault((row, col, name), []).append(ratio)
            for i, col in enumerate(["file hit", "file miss+store"]):
                ratios.setdefault(("cachu", f"{col} / diskcache", name), []).append(
                    rows["file vs diskcache"][i]
                )
    print(f"ratio to lru_cache (2-thread: lru_cache's rate / cachu's), {rounds} rounds")
    print(f"{'row':34} {'before':>15} {'after':>15}")
    for row, col in dict.fromkeys((r, c) for r, c, _ in ratios):
        cells = []
        for name in ("before", "after"):
            v = ratios[(row, col, name)]
            cells.append(f"{min(v):.2f}-{max(v):.2f}x")
        print(f"{row + ', ' + col:34} {cells[0]:>15} {cells[1]:>15}")


if __name__ == "__main__":
    main()
