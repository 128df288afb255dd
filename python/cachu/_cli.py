"""The operator's commands of ``python -m cachu``: ``keys``, ``stats``, ``get`` and
``clear`` on a cache directory (``--file-dir``) or a Redis server (``--redis-url``).

They see the keys this library writes (``{region}:{prefix}{function}|{params}``,
FORMATS.md) and nothing else: a key of another program is never listed, read or
deleted. ``--package`` names the package whose SQLite files (``{package}_cache*.db``)
to open; ``--prefix``, ``--ttl`` and ``--tag`` narrow the keys.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import cachu
from cachu._cachu import (
    Backend,
    _escape_glob,
    _region_name,
    _ttl_of_region,
    _ttl_of_sqlite_file,
)

_PACKAGE = "__cachu_cli__"
_REGION = r"(?:-1s|\d+[smhd])"
_SCAN_BATCH = 500


def add_commands(sub: Any) -> None:
    """Adds ``keys``, ``stats``, ``get`` and ``clear`` to the ``python -m cachu`` parser."""
    for name, help_text in [
        ("keys", "list the keys of a cache"),
        ("stats", "count the entries of a cache by region and function"),
        ("get", "show the value of one key"),
        ("clear", "delete the entries of a cache (asks first, unless --yes)"),
    ]:
        p = sub.add_parser(name, help=help_text)
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--file-dir", help="a directory of SQLite cache files")
        where.add_argument("--redis-url", help="a Redis server (redis://, rediss://, unix://)")
        p.add_argument("--package", help="the package whose cache files to open")
        p.add_argument("--prefix", default="", help="the key_prefix of the entries")
        p.add_argument("--ttl", type=int, help="only the TTL region of this many seconds")
        p.add_argument("--tag", help="only the entries of functions with this tag")
        p.add_argument("--json", action="store_true", help="print JSON")
        if name == "get":
            p.add_argument("key")
        if name == "clear":
            p.add_argument("--yes", action="store_true", help="delete without asking")


class _Cache:
    """The regions of one cache directory or Redis server, seen through the library."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.kind = "file" if args.file_dir else "redis"
        self.package = args.package
        options: dict[str, Any] = {"key_prefix": args.prefix}
        if self.kind == "file":
            options["file_dir"] = args.file_dir
        else:
            options["redis_url"] = args.redis_url
        if self.kind == "file" and self.package is None:
            sys.exit(
                "--file-dir needs --package: the files are named after it "
                "({package}_cache5min.db; --package '' for files of no package)"
            )
        self.pkg = self.package if self.package is not None else _PACKAGE
        cachu.configure(package=self.pkg, backend=self.kind, **options)
        region = re.escape(args.prefix)
        self.ours = re.compile(rf"^({_REGION}):{region}([A-Za-z_][A-Za-z0-9_]*)\|")
        self.ttl = args.ttl
        self.tag = args.tag
        self.args = args

    def regions(self) -> Iterator[tuple[int, Backend]]:
        """The TTL regions there are, each as a backend instance."""
        if self.kind == "file":
            seen = set()
            for path in sorted(Path(self.args.file_dir).glob("*.db")):
                ttl = _ttl_of_sqlite_file(self.package or None, path.name)
                if ttl is None:
                    continue
                wanted = self.ttl is None or _region_name(self.ttl) == _region_name(ttl)
                if wanted and ttl not in seen:
                    seen.add(ttl)
                    yield ttl, cachu.get_backend("file", self.pkg, ttl=ttl)
        else:
            # One region's instance scans the server; the keys carry their region.
            yield (
                (self.ttl if self.ttl is not None else 0),
                cachu.get_backend("redis", self.pkg, ttl=self.ttl if self.ttl is not None else 0),
            )

    def keys(self) -> list[str]:
        found: list[str] = []
        if self.kind == "file":
            for _, backend in self.regions():
                found += backend.keys(self._pattern())
        else:
            found = self._redis_keys()
        return sorted(k for k in found if self._wanted(k))

    def _pattern(self) -> Optional[str]:
        return f"*|{self.tag}|*" if self.tag else None

    def _wanted(self, key: str) -> bool:
        m = self.ours.match(key)
        if not m:
            return False
        if self.ttl is not None and m.group(1) != _region_name(self.ttl):
            return False
        return not self.tag or f"||{self.tag}||" in key

    def _redis_keys(self) -> list[str]:
        client = self._redis()
        match = f"*:{_escape_glob(self.args.prefix)}*|*"
        return [k.decode("utf-8", "replace") for k in client.scan_iter(match=match, count=1000)]

    def _redis(self) -> Any:
        try:
            import redis
        except ImportError:
            sys.exit("python -m cachu on Redis needs redis-py: pip install cachu[redis]")
        return redis.Redis.from_url(self.args.redis_url)

    def backend_of(self, key: str) -> Backend:
        m = self.ours.match(key)
        if not m:
            sys.exit(f"{key!r} is not a key of this library (with prefix {self.args.prefix!r})")
        ttl = _ttl_of_region(m.group(1))
        if ttl is None:
            sys.exit(f"{key!r} has no region of this library ({m.group(1)!r})")
        return cachu.get_backend(self.kind, self.pkg, ttl=ttl)

    def delete(self, keys: list[str]) -> Iterator[int]:
        """Deletes `keys` in batches; yields how many are done after each."""
        done = 0
        if self.kind == "redis":
            client = self._redis()
            for i in range(0, len(keys), _SCAN_BATCH):
                batch = keys[i : i + _SCAN_BATCH]
                client.unlink(*batch)
                done += len(batch)
                yield done
            return
        for key in keys:
            self.backend_of(key).delete(key)
            done += 1
            if done % _SCAN_BATCH == 0 or done == len(keys):
                yield done


def run(args: argparse.Namespace) -> int:
    """Runs one of the operator's commands."""
    cache = _Cache(args)
    if args.command == "keys":
        keys = cache.keys()
        print(json.dumps(keys) if args.json else "\n".join(keys))
        return 0
    if args.command == "stats":
        keys = cache.keys()
        by_region = Counter(cache.ours.match(k).group(1) for k in keys)  # type: ignore[union-attr]
        by_function = Counter(cache.ours.match(k).group(2) for k in keys)  # type: ignore[union-attr]
        stats = {"entries": len(keys), "regions": by_region, "functions": by_function}
        if args.json:
            print(json.dumps(stats))
        else:
            print(f"entries: {len(keys)}")
            for name, counts in (("region", by_region), ("function", by_function)):
                for what, n in sorted(counts.items()):
                    print(f"  {name} {what}: {n}")
        return 0
    if args.command == "get":
        value, created_at = cache.backend_of(args.key).get_with_metadata(args.key)
        if value is cachu.NO_VALUE:
            print(f"no value for {args.key!r}", file=sys.stderr)
            return 1
        if args.json:
            print(
                json.dumps(
                    {"key": args.key, "created_at": created_at, "value": value}, default=repr
                )
            )
        else:
            print(f"{args.key}\ncreated_at: {created_at}\n{value!r}")
        return 0
    keys = cache.keys()
    if not keys:
        print("nothing to clear")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                f"{len(keys)} entries would be deleted: add --yes to delete them", file=sys.stderr
            )
            return 2
        answer = input(f"delete {len(keys)} entries? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    for done in cache.delete(keys):
        width = 30
        filled = width * done // len(keys)
        print(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{len(keys)}",
            end="",
            file=sys.stderr,
        )
    print(file=sys.stderr)
    print(f"deleted {len(keys)} entries")
    return 0
