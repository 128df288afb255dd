"""Bad and hostile input: keys that try to collide, reprs that cannot be keys, tags
and options that are wrong, values that cannot be kept or are tampered with. Each is
a clear error or a safe miss, never lost or corrupted data."""

from __future__ import annotations

import pytest

import cachu
from cachu import ConfigurationError


class Crafted:
    """An argument whose repr is whatever the test says."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def test_reprs_with_key_separators_never_collide_with_other_arguments():
    @cachu.cache(ttl=300, package="collide")
    def pair(a, b=0):  # noqa: ANN001, ANN202
        return ("computed", repr(a), b)

    assert pair(1, 2) == ("computed", "1", 2)
    # Each of these would have written the key of pair(1, 2) (or of each other).
    for tricky in (Crafted("1 b=2"), Crafted("1|b=2"), "1 b=2", Crafted("1\u241esb=2")):
        assert pair(tricky) == ("computed", repr(tricky), 0)
    keys = {pair.cache_key(1, 2)} | {
        pair.cache_key(t) for t in (Crafted("1 b=2"), Crafted("1|b=2"), "1 b=2")
    }
    assert len(keys) == 4
    # Plain values keep the keys of cachu 0.2.x.
    assert pair.cache_key(1, 2) == "5m:pair|a=1 b=2"
    assert pair.cache_key("x", b="y") == "5m:pair|a='x' b='y'"


def test_functions_with_kwargs_are_guarded_against_any_name():
    @cachu.cache(ttl=300, package="collide")
    def anything(**kwargs):  # noqa: ANN003, ANN202
        return sorted(kwargs)

    assert anything(a=1, z=2) == ["a", "z"]
    assert anything(a=Crafted("1 z=2")) == ["a"]


def test_reprs_with_memory_addresses_are_warned_about_once():
    @cachu.cache(ttl=300, package="address")
    def f(x):  # noqa: ANN001, ANN202
        return 1

    with pytest.warns(RuntimeWarning, match="memory address"):
        f(object())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(object())  # said once per function


def test_text_that_looks_like_an_address_is_not_warned_about():
    @cachu.cache(ttl=300, package="address")
    def g(x):  # noqa: ANN001, ANN202
        return x

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert g("meet at 0x10") == "meet at 0x10"
        assert g("meet at 0x10") == "meet at 0x10"
    assert g.cache_info().hits == 1


def test_tags_with_separators_and_glob_characters_clear_only_their_own():
    @cachu.cache(ttl=300, package="tags", tag="us*")
    def starred(x: int) -> int:
        return x

    @cachu.cache(ttl=300, package="tags", tag="users")
    def users(x: int) -> int:
        return x

    @cachu.cache(ttl=300, package="tags", tag="|a|b|")
    def piped(x: int) -> int:
        return x

    starred(1)
    users(1)
    piped(1)
    assert piped.cache_key(1) == "5m:piped||a.b||x=1"
    assert cachu.cache_clear(tag="us*", package="tags") == 1
    assert cachu.cache_info(users).currsize == 1
    assert cachu.cache_clear(tag="a|b", package="tags") == 1
    assert cachu.cache_info(users).currsize == 1


@pytest.mark.parametrize(
    ("option", "bad"),
    [
        ("backend", "mongodb"),
        ("backend", 3),
        ("key_prefix", 5),
        ("file_dir", "/no/such/directory"),
        ("file_dir", 12),
        ("redis_url", "http://localhost"),
        ("redis_url", b"redis://localhost"),
        ("lock_timeout", -1),
        ("lock_timeout", "10"),
        ("lock_timeout", True),
        ("on_backend_error", "ignore"),
        ("on_lock_timeout", 1),
        ("memory_maxsize", -5),
        ("memory_copy", 0),
        ("memory_copy", "no"),
        ("no_such_option", 1),
    ],
)
def test_every_configure_option_refuses_wrong_values_and_changes_nothing(option, bad):
    cachu.configure(package="strict", key_prefix="kept:", lock_timeout=3)
    before = cachu.get_config(package="strict")
    with pytest.raises(ConfigurationError, match=option) as info:
        cachu.configure(package="strict", **{"key_prefix": "changed:", option: bad})
    assert repr(bad)[:20] in str(info.value) or option == "file_dir"
    assert cachu.get_config(package="strict") == before


def test_enormous_keys_work_on_every_backend(flavor):
    big = "x" * 1_000_000
    calls = []

    def echo(s: str) -> int:
        calls.append(1)
        return len(s)

    fn = flavor.cache(echo)
    assert flavor.call(fn, big) == 1_000_000
    assert flavor.call(fn, big) == 1_000_000
    assert calls == [1]


class Unpicklable:
    def __reduce__(self):  # noqa: ANN204
        raise TypeError("this object refuses to be pickled")


def test_unpicklable_results_are_returned_not_cached_and_lose_nothing(flavor):
    def make(kind: str):  # noqa: ANN202
        return Unpicklable() if kind == "bad" else {"kind": kind}

    fn = flavor.cache(make)
    assert flavor.call(fn, "good") == {"kind": "good"}
    with pytest.warns(RuntimeWarning, match="not cached"):
        value = flavor.call(fn, "bad")
    assert isinstance(value, Unpicklable)
    assert isinstance(flavor.call(fn, "bad"), Unpicklable)  # computed again: nothing stored
    info = cachu.cache_info(fn)
    assert (info.hits, info.misses, info.currsize) == (0, 3, 1)
    assert flavor.call(fn, "good") == {"kind": "good"}
    assert cachu.cache_info(fn).hits == 1


class Trap:
    """Unpickling this creates a file: proof that a value was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


SECRET = "a signing key of more than 16 bytes"


def test_signed_values_on_redis_refuse_tampering(redis_url, redis_server, tmp_path):
    cachu.configure(package="signed", backend="redis", redis_url=redis_url, signing_key=SECRET)
    try:
        calls = []

        @cachu.cache(ttl=300, package="signed")
        def value(x: int) -> dict:
            calls.append(x)
            return {"x": x}

        assert value(1) == {"x": 1}
        assert value(1) == {"x": 1}
        assert calls == [1]
        r = redis_server.client()
        raw = r.get("5m:value|x=1")
        assert raw[8:].startswith(b"cachu-hmac1:")
        assert repr(cachu.get_config(package="signed")).count("<secret>") == 1
        assert SECRET not in repr(cachu.get_config(package="signed"))

        # Someone with write access to Redis plants a pickle that runs code.
        import pickle
        import struct
        import time

        trap = tmp_path / "unpickled"
        evil = pickle.dumps(Trap(str(trap)))
        header = struct.pack("d", time.time())
        forged = raw[:8] + raw[8:][: 12 + 32] + evil  # a valid-looking tag, other data
        for planted in (header + evil, forged):
            r.set("5m:value|x=1", planted, ex=300)
            with pytest.warns(RuntimeWarning, match="not unpickled"):
                assert value(1) == {"x": 1}
            assert not trap.exists(), "a tampered value was unpickled"
            assert value(1) == {"x": 1}  # the miss stored a signed value again

        # Signed with another key: refused as well (said once already, above).
        cachu.configure(package="signed", signing_key="another key, also 16+ bytes")
        calls.clear()
        assert value(1) == {"x": 1}
        assert calls == [1]
    finally:
        cachu.configure(package="signed", signing_key="")


def test_signed_values_on_files(tmp_path):
    cachu.configure(
        package="signedfile", backend="file", file_dir=str(tmp_path), signing_key=SECRET
    )
    try:

        @cachu.cache(ttl=300, package="signedfile")
        def value(x: int) -> int:
            return x * 2

        assert value(2) == 4
        import sqlite3

        con = sqlite3.connect(tmp_path / "signedfile_cache5min.db")
        (blob,) = con.execute("SELECT value FROM cache").fetchone()
        assert blob.startswith(b"cachu-hmac1:")
        con.execute("UPDATE cache SET value = ?", (blob[:-3] + b"J.",))
        con.commit()
        con.close()
        with pytest.warns(RuntimeWarning, match="not unpickled"):
            assert value(2) == 4
    finally:
        cachu.configure(package="signedfile", signing_key="")


@pytest.mark.parametrize("bad", ["short", b"too short", 12345, ["a list"]])
def test_bad_signing_keys_are_refused_without_showing_them(bad):
    with pytest.raises(ConfigurationError, match="signing_key") as info:
        cachu.configure(package="badkey", signing_key=bad)
    if isinstance(bad, (str, bytes)):
        assert repr(bad) not in str(info.value)
