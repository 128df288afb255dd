"""Redis Cluster and Sentinel groups of real servers on loopback ports, for the tests.

A cluster is ``redis-server --cluster-enabled yes`` per node, joined by ``redis-cli
--cluster create``; its ports are at most 55535 (each node's bus is its port + 10000).
A Sentinel group is a master, a replica and three sentinels (``redis-server
--sentinel``, which is what ``redis-sentinel`` runs).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import redis_server_binary

CLI_HELP = (
    "the cluster tests need redis-cli: apt-get install redis-server (its redis-tools "
    "has redis-cli), or put redis-cli on PATH"
)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(n: int) -> list[int]:
    """``n`` free ports of at most 55535 whose bus ports (+10000) are free too."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < n:
        p = rng.randrange(20000, 55535)
        if p not in ports and _free(p) and _free(p + 10000):
            ports.append(p)
    return ports


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {CLI_HELP}")
    return found


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"a Redis process exited at start:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    pytest.fail(f"nothing listened on port {port} within 10 s")


class Node:
    """One redis-server (or sentinel) process that a test may kill and start again."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        args: list[str],
        binary: str,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.workdir, self.port, self.args, self.binary = workdir, port, args, binary
        self.client_options = client_options or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = self.workdir / f"node-{self.port}.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, *self.args], stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        _wait_listening(self.port, self.proc, log)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=5, **self.client_options
        )


def _server_args(port: int, *extra: str, tls: dict[str, str] | None = None) -> list[str]:
    ports = ["--port", str(port)]
    if tls:
        ports = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", tls["cert"]]
        ports += ["--tls-key-file", tls["key"], "--tls-ca-cert-file", tls["ca"]]
        ports += ["--tls-auth-clients", "no", "--tls-cluster", "yes", "--tls-replication", "yes"]
    return [*ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra]


class Cluster:
    """``masters`` masters, each with ``replicas`` replicas; over TLS with ``tls`` (the
    files of ``make_tls_files``), with a password if given."""

    def __init__(
        self,
        workdir: Path,
        masters: int = 3,
        replicas: int = 1,
        tls: dict[str, str] | None = None,
        password: str | None = None,
    ) -> None:
        binary = redis_server_binary(tls=tls is not None)
        cli = _tool("redis-cli")
        self.workdir, self.tls, self.password = workdir, tls, password
        options: dict[str, Any] = {}
        cli_options: list[str] = []
        auth: list[str] = []
        if tls:
            options.update(ssl=True, ssl_ca_certs=tls["ca"])
            cli_options += ["--tls", "--cacert", tls["ca"]]
        if password:
            options["password"] = password
            cli_options += ["-a", password, "--no-auth-warning"]
            auth = ["--requirepass", password, "--masterauth", password]
        ports = cluster_ports(masters * (1 + replicas))
        self.nodes: dict[int, Node] = {}
        try:
            for port in ports:
                self._start_node(workdir, port, binary, auth, options)
            self._join(cli, ports, replicas, cli_options)
        except BaseException:
            self.stop()  # a cluster that did not form leaves no server behind
            raise

    def _start_node(
        self, workdir: Path, port: int, binary: str, auth: list[str], options: dict[str, Any]
    ) -> None:
        d = workdir / str(port)
        d.mkdir(parents=True)
        args = _server_args(
            port,
            "--dir",
            str(d),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-replica-validity-factor",
            "0",
            *auth,
            tls=self.tls,
        )
        self.nodes[port] = Node(d, port, args, binary, options)

    def _join(self, cli: str, ports: list[int], replicas: int, cli_options: list[str]) -> None:
        if self.tls:
            self._join_by_hand(ports)  # Debian's redis-cli speaks no TLS
        else:
            create = [cli, *cli_options, "--cluster", "create"]
            create += [f"127.0.0.1:{p}" for p in ports]
            create += ["--cluster-replicas", str(replicas), "--cluster-yes"]
            done = subprocess.run(create, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                pytest.fail(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
        self.wait_ok()

    def _join_by_hand(self, ports: list[int]) -> None:
        """Masters only: each takes an equal share of the slots, then all meet."""
        share = 16384 // len(ports)
        for i, port in enumerate(ports):
            last = 16383 if i == len(ports) - 1 else (i + 1) * share - 1
            self.nodes[port].client().execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
        first = self.nodes[ports[0]].client()
        for port in ports[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", port)

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{p}" for p in list(self.nodes)[:2])
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss+cluster://{auth}{seeds}/0?ssl_ca_certs={self.tls['ca']}"
        return f"redis+cluster://{auth}{seeds}/0"

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says the cluster is ok and agrees on all slots."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (
                    all(
                        b"cluster_state:ok" in n.client().execute_command("CLUSTER", "INFO")
                        for n in self.nodes.values()
                        if n.proc is not None
                    )
                    and len(self.masters()) >= 1
                ):
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.1)
        pytest.fail("the cluster did not become ok")

    def masters(self) -> list[int]:
        """Ports of the masters that serve slots and are not failed, as a live node's
        ``CLUSTER NODES`` says."""
        for node in self.nodes.values():
            if node.proc is None:
                continue
            try:
                text = node.client().execute_command("CLUSTER", "NODES").decode()
            except Exception:  # noqa: BLE001 - down or loading: ask another
                continue
            out = []
            for line in text.splitlines():
                f = line.split()
                if "master" in f[2] and "fail" not in f[2] and len(f) > 8:
                    out.append(int(f[1].split("@")[0].rsplit(":", 1)[1]))
            return sorted(out)
        return []

    def client(self) -> Any:
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode("127.0.0.1", p) for p in self.masters()]
        return RedisCluster(startup_nodes=nodes, **next(iter(self.nodes.values())).client_options)

    def all_keys(self) -> set[bytes]:
        keys: set[bytes] = set()
        for port in self.masters():
            keys.update(self.nodes[port].client().scan_iter(count=1000))
        return keys

    def flush(self) -> None:
        for port in self.masters():
            self.nodes[port].client().flushall()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


class SentinelGroup:
    """A master, a replica and three sentinels watching ``mymaster``; every one of
    them over TLS with ``tls`` (the files of ``make_tls_files``); the data nodes asking
    for ``password``, the sentinels for ``sentinel_password``, if given."""

    name = "mymaster"

    def __init__(
        self,
        workdir: Path,
        tls: dict[str, str] | None = None,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        binary = redis_server_binary(tls=tls is not None)
        self.tls = tls
        self.password, self.sentinel_password = password, sentinel_password
        self.options: dict[str, Any] = {}
        if tls:
            self.options = {"ssl": True, "ssl_ca_certs": tls["ca"]}
        ports = cluster_ports(5)
        self.data: list[Node] = []
        self.sentinels: list[Node] = []
        try:
            self._start(workdir, binary, ports)
        except BaseException:
            self.stop()  # a group that did not form leaves no server behind
            raise

    def _start(self, workdir: Path, binary: str, ports: list[int]) -> None:
        for i, port in enumerate(ports[:2]):
            d = workdir / f"data-{port}"
            d.mkdir(parents=True)
            extra = ["--dir", str(d)]
            if i == 1:
                extra += ["--replicaof", "127.0.0.1", str(ports[0])]
            if self.password:
                extra += ["--requirepass", self.password, "--masterauth", self.password]
            args = _server_args(port, *extra, tls=self.tls)
            self.data.append(Node(d, port, args, binary, self._options(self.password)))
        for port in ports[2:]:
            d = workdir / f"sentinel-{port}"
            d.mkdir(parents=True)
            conf = d / "sentinel.conf"
            listen = f"port {port}\n"
            if self.tls:
                listen = (
                    f"port 0\ntls-port {port}\ntls-cert-file {self.tls['cert']}\n"
                    f"tls-key-file {self.tls['key']}\ntls-ca-cert-file {self.tls['ca']}\n"
                    "tls-auth-clients no\ntls-replication yes\n"
                )
            conf.write_text(
                f"{listen}bind 127.0.0.1\ndir {d}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {ports[0]} 2\n"
                f"sentinel down-after-milliseconds {self.name} 1000\n"
                f"sentinel failover-timeout {self.name} 5000\n"
                f"sentinel parallel-syncs {self.name} 1\n"
            )
            with conf.open("a") as more:
                if self.password:
                    more.write(f"sentinel auth-pass {self.name} {self.password}\n")
                if self.sentinel_password:
                    more.write(f"requirepass {self.sentinel_password}\n")
                    more.write(f"sentinel sentinel-pass {self.sentinel_password}\n")
            # redis-server in Sentinel mode (what the redis-sentinel command runs).
            args = [str(conf), "--sentinel"]
            options = self._options(self.sentinel_password)
            self.sentinels.append(Node(d, port, args, binary, options))
        self.wait_master()

    def _options(self, password: str | None) -> dict[str, Any]:
        return {**self.options, "password": password} if password else self.options

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        auth = f":{self.password}@" if self.password else ""
        options = [f"ssl_ca_certs={self.tls['ca']}"] if self.tls else []
        if self.sentinel_password:
            options.append(f"sentinel_password={self.sentinel_password}")
        query = "?" + "&".join(options) if options else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}+sentinel://{auth}{hosts}/{self.name}/0{query}"

    def master_port(self) -> int:
        for s in self.sentinels:
            try:
                _, port = s.client().execute_command(
                    "SENTINEL", "get-master-addr-by-name", self.name
                )
                return int(port)
            except Exception:  # noqa: BLE001 - try the next sentinel
                continue
        raise RuntimeError("no sentinel answered")

    def master(self) -> Node:
        port = self.master_port()
        return next(n for n in self.data if n.port == port)

    def wait_master(self, other_than: int | None = None, timeout: float = 30) -> int:
        """Until the sentinels name a master (other than ``other_than``) that says it is
        one and whose replica is in sync; its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                port = self.master_port()
                node = next(n for n in self.data if n.port == port)
                if port != other_than and node.client().execute_command("ROLE")[0] == b"master":
                    return port
            except Exception:  # noqa: BLE001 - not yet
                pass
            time.sleep(0.1)
        pytest.fail("the sentinels did not agree on a master")

    def stop(self) -> None:
        for n in self.sentinels + self.data:
            n.stop()
