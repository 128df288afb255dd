"""Keys are byte for byte those of cachu 0.2.7, checked against the published package."""

from __future__ import annotations

import json

import cachu
from conftest import run_python

FUNCTIONS = """
import datetime, decimal
def plain(a, b): pass
def defaults(a, b=2, c="x"): pass
def more_defaults(a, b=None, c=True, d=-5, e="s", f=(1,), g=[1], h=1.5): pass
def varargs(a, *args): pass
def kwargs_fn(a, **kw): pass
def kwonly(a, *, b=3): pass
def strings(s): pass
class K:
    def method(self, x): pass
    def __repr__(self): return "K()"
"""

# (function, args, kwargs) as Python source, evaluated on both sides.
CALLS = [
    ("plain", "(1, 2)", "{}"),
    ("plain", "(1,)", "{'b': 'two'}"),
    ("plain", "()", "{'b': 1, 'a': 2}"),
    ("defaults", "(1,)", "{}"),
    ("defaults", "(1, None, True)", "{}"),
    ("defaults", "(1,)", "{'c': 'it\\'s'}"),
    ("more_defaults", "(1,)", "{}"),
    ("more_defaults", "(1, 2)", "{'h': 2}"),
    ("varargs", "(1, 2, 3)", "{}"),
    ("kwargs_fn", "(1,)", "{'z': 1.5, 'y': [1, 2], '_hidden': 3}"),
    ("kwonly", "(1,)", "{}"),
    ("kwonly", "(1,)", "{'b': 4}"),
    ("strings", "('plain',)", "{}"),
    ("strings", "('tab\\tnew\\nline',)", "{}"),
    ("strings", "('caf\\u00e9 \\u4e2d',)", "{}"),
    ("strings", "('both \\' and \"',)", "{}"),
    ("strings", "('back\\\\slash',)", "{}"),
    ("strings", "(2**70,)", "{}"),
    ("strings", "(-7,)", "{}"),
    ("strings", "((1, 'a', None),)", "{}"),
    ("strings", "({'k': {1, 2}},)", "{}"),
    ("strings", "(datetime.date(2024, 1, 2),)", "{}"),
    ("strings", "(decimal.Decimal('1.10'),)", "{}"),
    ("strings", "(K(),)", "{}"),
    ("strings", "(b'bytes',)", "{}"),
    ("strings", "(float('inf'),)", "{}"),
]

TAGS = ["", "users", "|users|", "a|b", "|x"]


def reference_keys(python: str) -> list[str]:
    code = (
        FUNCTIONS
        + f"""
import json
from cachu.keys import make_key_generator, mangle_key
out = []
for tag in {TAGS!r}:
    for name, args, kwargs in {CALLS!r}:
        gen = make_key_generator(globals()[name], tag=tag)
        out.append(mangle_key(gen(*eval(args), **eval(kwargs)), 'p:', 300))
out.append(mangle_key(make_key_generator(K.method)(K(), 5), '', 7200))
print(json.dumps(out))
"""
    )
    return json.loads(run_python(python, code))


def our_keys() -> list[str]:
    ns: dict = {}
    exec(FUNCTIONS, ns)
    out = []
    for tag in TAGS:
        for name, args, kwargs in CALLS:
            f = cachu.cache(ttl=300, tag=tag, package="keys_pkg")(ns[name])
            out.append(f.cache_key(*eval(args, ns), **eval(kwargs, ns)))
    m = cachu.cache(ttl=7200, package="plain_pkg")(ns["K"].method)
    out.append(m.cache_key(ns["K"](), 5))
    return out


def test_keys_match_the_published_package(reference_python):
    cachu.configure(key_prefix="p:", package="keys_pkg")
    theirs = reference_keys(reference_python)
    ours = our_keys()
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine == ref


def test_key_examples_of_the_format():
    @cachu.cache(ttl=300, package="fmt_pkg")
    def get_user(user_id):
        return user_id

    @cachu.cache(ttl=300, tag="users", package="fmt_pkg")
    def tagged(user_id):
        return user_id

    cachu.configure(key_prefix="v1:", package="fmt_pkg")
    assert get_user.cache_key(123) == "5m:v1:get_user|user_id=123"
    cachu.configure(key_prefix="", package="fmt_pkg")
    assert tagged.cache_key(user_id=123) == "5m:get_user||users||user_id=123".replace(
        "get_user", "tagged"
    )


def test_regions():
    for ttl, region in [(5, "5s"), (60, "1m"), (3599, "59m"), (3600, "1h"), (86400, "1d")]:
        f = cachu.cache(ttl=ttl, package="region_pkg")(lambda: None)
        assert f.cache_key().startswith(f"{region}:")


def test_a_repr_that_calls_a_cached_function_does_not_mix_keys():
    """Keys are built in a per-thread buffer; a repr that re-enters the cache (another
    cached call while the outer key is half built) must get a buffer of its own."""

    @cachu.cache(ttl=300, package="reenter")
    def inner(x: int) -> str:
        return f"inner{x}"

    class Nested:
        def __repr__(self) -> str:
            return f"Nested({inner(7)})"

    @cachu.cache(ttl=300, package="reenter")
    def outer(a: int, obj: Nested) -> str:
        return f"outer{a}"

    assert outer(1, Nested()) == "outer1"
    assert outer.cache_key(1, Nested()) == "5m:outer|a=1 obj=Nested(inner7)"
    assert inner.cache_key(7) == "5m:inner|x=7"
    assert cachu.cache_info(outer).hits == 0
    assert outer(1, Nested()) == "outer1"
    assert cachu.cache_info(outer).hits == 1
    assert cachu.cache_info(inner).hits >= 2


def test_defaults_are_written_as_the_same_arguments_given_explicitly():
    @cachu.cache(ttl=60, package="defaults_pkg")
    def f(a, sep="a|b", n=None, flag=False, word="x a=1", big=2**70):  # noqa: ANN001, ANN202
        return a

    explicit = f.cache_key(1, "a|b", None, False, "x a=1", 2**70)
    assert f.cache_key(1) == explicit
    assert f.cache_key(a=1, sep="a|b", n=None, flag=False, word="x a=1", big=2**70) == explicit

    items: list[int] = []

    @cachu.cache(ttl=60, package="defaults_pkg")
    def g(a, xs=items):  # noqa: ANN001, ANN202, B006
        return a

    assert g.cache_key(1) == "1m:g|a=1 xs=[]"
    items.append(5)  # a mutable default is written as it is at the call
    assert g.cache_key(1) == "1m:g|a=1 xs=[5]"


def test_every_way_of_calling_reaches_the_same_entry():
    """The interpreter's calls (positional, keywords, unpacked, through C: map, partial,
    a bound method) come in by vectorcall or tp_call, packed or not: one key."""
    import functools

    import pytest

    calls = []

    @cachu.cache(ttl=300, package="callways")
    def area(w, h=2):
        calls.append((w, h))
        return w * h

    assert area(3) == 6
    assert area(3, 2) == area(w=3) == area(h=2, w=3) == area(*[3], **{"h": 2}) == 6
    assert list(map(area, [3, 3])) == [6, 6]
    assert functools.partial(area, h=2)(3) == functools.partial(area, 3)() == 6
    assert area(3, _skip_cache=False) == 6
    assert calls == [(3, 2)]
    assert cachu.cache_info(area).hits == 9

    class Shapes:
        @cachu.cache(ttl=300, package="callways")
        def square(self, side):
            return side * side

        def __repr__(self) -> str:
            return "Shapes()"

    s = Shapes()
    assert s.square(4) == Shapes.square(s, 4) == s.square(side=4) == 16
    assert cachu.cache_info(Shapes.square).hits == 2

    @cachu.cache(ttl=300, package="callways")
    def nothing():
        return "done"

    assert nothing() == nothing() == "done"
    # Errors of the call itself are the function's, as without the cache.
    with pytest.raises(TypeError):
        area(1, 2, 3)
    with pytest.raises(TypeError):
        area()


def test_floats_ints_and_tuples_are_written_as_repr_writes_them():
    import math
    import random
    import struct

    @cachu.cache(ttl=60, package="repr_check")
    def f(x):
        return x

    rng = random.Random(5)
    floats = [
        0.0,
        -0.0,
        1.0,
        -1.5,
        0.1,
        1e16,
        1e15,
        123456789012345678.0,
        1e-4,
        1e-5,
        1.5e-5,
        2.5e300,
        5e-324,
        1.7976931348623157e308,
        math.inf,
        -math.inf,
        math.nan,
        0.30000000000000004,
        100.0,
        1e22,
        9007199254740993.0,
    ]
    floats += [rng.uniform(-1e6, 1e6) for _ in range(3000)]
    floats += [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(3000)]
    floats += [rng.random() * 10 ** rng.randint(-30, 30) for _ in range(3000)]
    for x in floats:
        assert f.cache_key(x) == f"1m:f|x={x!r}", x
    values = [
        (),
        (1,),
        ("a", 2),
        (1.5, None, True, ("x", (2.0,))),
        ((((((1,),),),),),),
        ("it's", 'say "hi"'),
        (1, [2, 3]),
        (frozenset({1}),),
    ]
    for v in values:
        assert f.cache_key(v) == f"1m:f|x={v!r}", v
    # Ints of every length and sign, at and past the 64-bit edges.
    ints = [0, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**30, -(10**30), True, False]
    ints += [sign * rng.randrange(10 ** (d - 1), 10**d) for d in range(1, 21) for sign in (1, -1)]
    for n in ints:
        assert f.cache_key(n) == f"1m:f|x={n!r}", n
        assert f.cache_key((n, n)) == f"1m:f|x={(n, n)!r}", n


def test_keyword_calls_are_keyed_as_the_packed_call_keys_them():
    """Keywords read from the interpreter's call (a hit answered without a dict) give
    the key of the same call packed: one entry per distinct call, errors unchanged."""
    import pytest

    runs = []

    @cachu.cache(ttl=300, package="kwfast", exclude={"verbose"})
    def f(k, region="eu-west-1", flags=(), verbose=False, *, mode="a"):
        runs.append((k, region, flags, mode))
        return (k, region, flags, mode)

    shapes = [
        ((1,), {}),
        ((1,), {"flags": ("beta", 2)}),
        ((1, "eu-west-1"), {"flags": ("beta", 2)}),
        ((), {"k": 1, "region": "eu-west-1", "flags": ("beta", 2)}),
        ((), {"flags": ("beta", 2), "k": 1}),
        ((1,), {"verbose": True, "flags": ("beta", 2)}),
        ((1,), {"mode": "b"}),
        ((1,), {"region": "us-east-1"}),
        ((2.5,), {"flags": frozenset({1})}),
    ]
    keys = [f.cache_key(*a, **kw) for a, kw in shapes]
    for _ in range(3):
        for a, kw in shapes:
            assert f(*a, **kw) == (
                kw.get("k", a[0] if a else None),
                kw.get("region", a[1] if len(a) > 1 else "eu-west-1"),
                kw.get("flags", ()),
                kw.get("mode", "a"),
            )
    assert len(runs) == len(set(keys)) == 5, (runs, keys)
    info = cachu.cache_info(f)
    assert info.hits == 3 * len(shapes) - len(runs)
    with pytest.raises(TypeError):
        f(1, k=2)
    with pytest.raises(TypeError):
        f(1, nope=3)
    with pytest.raises(TypeError):
        f(1, region="a", **{"region2": 1})
