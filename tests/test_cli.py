"""The `python -m cachu` entry points run on a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_shows_hits():
    proc = subprocess.run(
        [sys.executable, "-m", "cachu", "demo"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "CacheInfo(hits=1, misses=1, currsize=1)" in proc.stdout
    assert "cached value is still {'id': 123, 'name': 'user 123'}" in proc.stdout
    assert "10 tasks at once ran it once: CacheInfo(hits=9, misses=1" in proc.stdout
    assert "Done." in proc.stdout


def test_bench_prints_a_ratio():
    proc = subprocess.run(
        [sys.executable, "-m", "cachu", "bench", "-n", "1000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "x lru_cache" in proc.stdout


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachu", *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def test_version():
    import cachu

    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"cachu {cachu.__version__}"


FILL = """
import sys, cachu
kind, where = sys.argv[1], sys.argv[2]
opts = {"file_dir": where} if kind == "file" else {"redis_url": where}
cachu.configure(package="shop", backend=kind, key_prefix="v2:", **opts)

@cachu.cache(ttl=300, tag="users", package="shop")
def get_user(user_id):
    return {"id": user_id}

@cachu.cache(ttl=3600, package="shop")
def get_order(order_id):
    return [order_id]

for i in range(int(sys.argv[3])):
    get_user(i)
get_order(1)
"""


def fill(kind: str, where: str, n: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", FILL, kind, where, str(n)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_keys_stats_get_and_clear_on_cache_files(tmp_path):
    import json

    fill("file", str(tmp_path), 3)
    where = ["--file-dir", str(tmp_path), "--package", "shop", "--prefix", "v2:"]
    keys = json.loads(cli("keys", *where, "--json").stdout)
    assert keys == [
        "1h:v2:get_order|order_id=1",
        "5m:v2:get_user||users||user_id=0",
        "5m:v2:get_user||users||user_id=1",
        "5m:v2:get_user||users||user_id=2",
    ]
    stats = json.loads(cli("stats", *where, "--json").stdout)
    assert stats["entries"] == 4 and stats["functions"] == {"get_order": 1, "get_user": 3}
    assert json.loads(cli("keys", *where, "--tag", "users", "--json").stdout) == keys[1:]
    got = cli("get", *where, "5m:v2:get_user||users||user_id=1")
    assert got.returncode == 0 and "{'id': 1}" in got.stdout
    # Asked first: without a terminal and without --yes, nothing is deleted.
    refused = cli("clear", *where, "--ttl", "300")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    cleared = cli("clear", *where, "--ttl", "300", "--yes")
    assert cleared.returncode == 0 and "deleted 3 entries" in cleared.stdout
    assert "3/3" in cleared.stderr  # the progress bar
    assert json.loads(cli("keys", *where, "--json").stdout) == keys[:1]
    assert "needs --package" in cli("keys", "--file-dir", str(tmp_path)).stderr


def test_clear_on_redis_never_touches_keys_this_library_did_not_write(redis_url, redis_server):
    fill("redis", redis_url, 1200)
    client = redis_server.client()
    foreign = {
        "session:abc": "x",
        "5m:v2:not a function|x": "y",
        "v2:get_user|user_id=1": "z",
        "5m:v1:get_user|user_id=1": "w",
    }
    for k, v in foreign.items():
        client.set(k, v)
    where = ["--redis-url", redis_url, "--prefix", "v2:"]
    assert cli("stats", *where).stdout.startswith("entries: 1201")
    cleared = cli("clear", *where, "--yes")
    assert cleared.returncode == 0 and "deleted 1201 entries" in cleared.stdout
    assert "1201/1201" in cleared.stderr
    left = sorted(k.decode() for k in client.keys("*"))
    assert left == sorted(foreign)
