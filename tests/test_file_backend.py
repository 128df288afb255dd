"""The file backend: SQLite files shared with cachu 0.2.7, across processes and crashes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import cachu
from cachu import cache
from conftest import run_python

PKG = "filepkg"


@pytest.fixture
def file_dir(tmp_path):
    cachu.configure(file_dir=str(tmp_path), backend="file", package=PKG)
    yield tmp_path
    cachu.configure(file_dir="/tmp", backend="memory", package=PKG)


def test_files_and_schema_follow_the_format(file_dir):
    @cache(ttl=300, package=PKG)
    def get_user(user_id):
        return {"id": user_id}

    @cache(ttl=30, package=PKG)
    def short(x):
        return x

    @cache(ttl=7200, package=PKG)
    def long(x):
        return x

    get_user(1)
    short(1)
    long(1)
    names = sorted(p.name for p in file_dir.glob("*.db"))
    assert names == ["filepkg_cache2hour.db", "filepkg_cache30sec.db", "filepkg_cache5min.db"]
    conn = sqlite3.connect(file_dir / "filepkg_cache5min.db")
    cols = [r[1] for r in conn.execute("PRAGMA table_info(cache)")]
    assert cols == ["key", "value", "created_at", "expires_at"]
    ((key, value, created, expires),) = conn.execute("SELECT * FROM cache").fetchall()
    import pickle

    assert key == "5m:get_user|user_id=1"
    assert pickle.loads(value) == {"id": 1}
    assert expires - created == pytest.approx(300)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_hits_misses_helpers_and_clears(file_dir):
    calls = []

    @cache(ttl=300, tag="users", package=PKG)
    def get_user(user_id):
        calls.append(user_id)
        return {"id": user_id}

    get_user(1)
    get_user(1)
    assert calls == [1]
    u = get_user(1)
    u["id"] = 99
    assert get_user(1) == {"id": 1}
    get_user.set({"id": 5, "set": True}, user_id=5)
    assert get_user.get(user_id=5) == {"id": 5, "set": True}
    get_user.invalidate(user_id=5)
    assert get_user.get(default=None, user_id=5) is None
    assert cachu.cache_info(get_user) == cachu.CacheInfo(hits=3, misses=1, currsize=1)
    assert cachu.cache_clear(tag="users", package=PKG) == 1
    assert cachu.cache_info(get_user).currsize == 0


def test_expired_rows_are_misses(file_dir):
    calls = []

    @cache(ttl=1, package=PKG)
    def f(x):
        calls.append(x)
        return x

    f(1)
    time.sleep(1.1)
    f(1)
    assert calls == [1, 1]


def test_entries_survive_the_process(file_dir, this_python):
    code = textwrap.dedent(
        f"""
        import cachu, sys
        cachu.configure(file_dir={str(file_dir)!r}, package={PKG!r})
        calls = []
        @cachu.cache(ttl=300, backend='file', package={PKG!r})
        def compute(x):
            calls.append(x)
            return x * 10
        print(compute(4), len(calls))
        """
    )
    assert run_python(this_python, code).split() == ["40", "1"]
    assert run_python(this_python, code).split() == ["40", "0"]


def test_published_package_reads_our_files_and_we_read_theirs(file_dir, reference_python):
    ref = textwrap.dedent(
        f"""
        import sys
        from cachu.config import _registry
        from cachu import cache
        _registry.configure(package={PKG!r}, file_dir={str(file_dir)!r})
        @cache(ttl=300, backend='file', package={PKG!r})
        def get_user(user_id):
            if sys.argv[-1] == 'read':
                raise AssertionError('the published package missed our entry')
            return {{'id': user_id, 'by': 'reference'}}
        print(get_user(1))
        """
    )
    out = run_python(reference_python, ref)
    assert "reference" in out

    @cache(ttl=300, package=PKG)
    def get_user(user_id):
        return {"id": user_id, "by": "us"}

    assert get_user(1) == {"id": 1, "by": "reference"}, "we must read their entry"
    assert get_user(2) == {"id": 2, "by": "us"}
    proc = subprocess.run(
        [reference_python, "-c", ref.replace("get_user(1)", "get_user(2)"), "read"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "'by': 'us'" in proc.stdout


WRITER = """
import cachu, sys
cachu.configure(file_dir=sys.argv[1], package='mp')
@cachu.cache(ttl=300, backend='file', package='mp')
def f(i, proc):
    return {'i': i, 'payload': 'x' * 200}
start, n = int(sys.argv[2]), int(sys.argv[3])
for i in range(start, start + n):
    f(i, 0)
    f.set({'i': i, 'again': True}, i=i, proc=1)
print('done')
"""


def test_several_processes_write_one_file_without_loss(file_dir, this_python):
    procs = [
        subprocess.Popen(
            [this_python, "-c", WRITER, str(file_dir), str(k * 300), "300"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "done" in out
    conn = sqlite3.connect(file_dir / "mp_cache5min.db")
    assert conn.execute("SELECT count(*) FROM cache").fetchone()[0] == 4 * 300 * 2
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_killed_writer_leaves_a_usable_file(file_dir, this_python):
    p = subprocess.Popen(
        [this_python, "-c", WRITER, str(file_dir), "0", "1000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    db = file_dir / "mp_cache5min.db"
    deadline = time.time() + 30
    while time.time() < deadline:
        if db.exists() and db.stat().st_size > 64 * 1024:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    code = (
        "import cachu, sys\n"
        f"cachu.configure(file_dir={str(file_dir)!r}, package='mp')\n"
        "@cachu.cache(ttl=300, backend='file', package='mp')\n"
        "def f(i, proc):\n    return {'i': i, 'new': True}\n"
        "print(f(10**7, 0)['new'], cachu.cache_info(f).currsize > 0)\n"
    )
    out = run_python(this_python, code)
    assert out.split() == ["True", "True"]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.skipif(sys.platform != "linux", reason="file leases are taken on Linux only")
def test_a_killed_file_lease_holder_delays_nobody(file_dir, this_python):
    """A process killed while it computes a key under the file lease: the kernel drops
    its lock, and the next caller computes at once instead of waiting lock_timeout."""
    started = file_dir / "started"
    holder = (
        "import cachu, pathlib, time\n"
        f"cachu.configure(file_dir={str(file_dir)!r}, package='leases')\n"
        "@cachu.cache(ttl=300, backend='file', package='leases')\n"
        "def slow(x):\n"
        f"    pathlib.Path({str(started)!r}).write_text('computing')\n"
        "    time.sleep(60)\n"
        "    return x\n"
        "slow(1)\n"
    )
    p = subprocess.Popen([this_python, "-c", holder], stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while not started.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert started.exists(), p.stderr.read() if p.poll() is not None else "no start"

    cachu.configure(file_dir=str(file_dir), package="leases", lock_timeout=10)

    @cache(ttl=300, backend="file", package="leases")
    def slow(x):  # noqa: ANN001, ANN202
        return x * 10

    # While the holder lives, a caller waits for it (and gives up after lock_timeout).
    cachu.configure(package="leases", lock_timeout=0.3)
    t = time.perf_counter()
    assert slow(1) == 10
    assert time.perf_counter() - t >= 0.25, "the lease of a live holder was not seen"
    slow.invalidate(x=1)

    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    cachu.configure(package="leases", lock_timeout=10)
    t = time.perf_counter()
    assert slow(1) == 10
    assert time.perf_counter() - t < 2, "a dead holder's lease was still held"


def test_a_file_that_is_not_a_database_is_a_miss_and_kept(file_dir):
    junk = file_dir / "filepkg_cache5min.db"
    junk.write_bytes(b"my precious notes " * 500)
    calls = []

    @cache(ttl=300, package=PKG)
    def f(x):
        calls.append(x)
        return x

    with pytest.warns(RuntimeWarning, match="filepkg_cache5min.db"):
        assert f(1) == 1
    assert f(1) == 1
    assert calls == [1, 1]
    assert junk.read_bytes().startswith(b"my precious notes")


def test_a_foreign_table_is_a_miss_and_kept(file_dir):
    db = file_dir / "filepkg_cache1min.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE cache (id INTEGER PRIMARY KEY, payload TEXT)")
    conn.execute("INSERT INTO cache (payload) VALUES ('theirs')")
    conn.commit()
    conn.close()

    @cache(ttl=60, package=PKG)
    def f(x):
        return x

    with pytest.warns(RuntimeWarning, match="foreign schema"):
        assert f(1) == 1
    assert sqlite3.connect(db).execute("SELECT payload FROM cache").fetchall() == [("theirs",)]


def test_an_undecodable_value_is_a_miss(file_dir):
    @cache(ttl=300, package=PKG)
    def f(x):
        return {"x": x}

    f(1)
    conn = sqlite3.connect(file_dir / "filepkg_cache5min.db")
    conn.execute("UPDATE cache SET value = ?", (b"\x80\x05garbage",))
    conn.commit()
    with pytest.warns(RuntimeWarning, match="could not be decoded"):
        assert f(1) == {"x": 1}
    assert f(1) == {"x": 1}


def test_direct_backend_access(file_dir):
    backend = cachu.get_backend("file", package=PKG, ttl=300)
    backend.set("my_key", {"data": "value"}, ttl=300)
    assert backend.get("my_key") == {"data": "value"}
    assert backend.keys() == ["my_key"]
    backend.delete("my_key")
    assert backend.get("my_key") is cachu.NO_VALUE


def test_gil_is_released_during_sqlite_io(file_dir):
    @cache(ttl=300, package=PKG)
    def f(x):
        return "v" * 10_000

    ticks = []
    stop = False

    def ticker():
        while not stop:
            ticks.append(1)
            time.sleep(0)

    import threading

    t = threading.Thread(target=ticker)
    t.start()
    try:
        for i in range(300):
            f(i)
            f(i)
    finally:
        stop = True
        t.join()
    assert len(ticks) > 50


@pytest.mark.skipif(sys.platform != "linux", reason="fork semantics checked on Linux")
# What this test checks: a fork of a process whose threads hold connections (3.12+ warn).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_child_uses_its_own_connections(file_dir):
    @cache(ttl=300, package=PKG)
    def f(x):
        return x + 1

    f(1)
    pid = os.fork()
    if pid == 0:
        try:
            ok = f(1) == 2 and f(50) == 51
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert cachu.cache_info(f).currsize == 2
