"""The data-only codec: values survive the trip exactly, and whatever a hostile candidate sends decodes to plain
data or is refused (WireError), never to an object that could run code in the judge."""

from __future__ import annotations

import collections
import math

import pytest

from transformer_squared.sandbox import wire


def _trip(value, ref=None, deref=None):
    line = wire.dumps({"value": wire.encode(value, ref)})
    return wire.decode(wire.loads(line)["value"], deref)


VALUES = [
    None, True, False, 0, -7, 2**200, -(10**5000), 0.1, -0.0, 1e308, "", "héllo\n\udcff", b"\x00\xff",
    bytearray(b"ab"), 3 - 4j, [1, [2, (3,)]], (), (1,), {1: "a", (2, 3): [4], "k": None}, {1, 2.5, "x"},
    frozenset({(1, 2)}), range(1, 10, 3), collections.OrderedDict([("b", 1), ("a", 2)]),
    collections.Counter("abracadabra"), collections.deque([1, 2], maxlen=5), collections.defaultdict(list, {1: [2]}),
    int, (int, str),
]


@pytest.mark.parametrize("value", VALUES, ids=[f"{type(v).__name__}-{i}" for i, v in enumerate(VALUES)])
def test_values_round_trip_exactly(value):
    got = _trip(value)
    assert got == value and type(got) is type(value)
    if isinstance(value, float):
        assert math.copysign(1, got) == math.copysign(1, value)
    if isinstance(value, dict):
        assert list(got) == list(value)  # order kept
    if isinstance(value, collections.defaultdict):
        assert got.default_factory is value.default_factory


def test_special_floats_and_subclasses():
    inf, nan = _trip([math.inf, math.nan])
    assert inf == math.inf and math.isnan(nan)
    Point = collections.namedtuple("Point", "x y")
    assert type(_trip(Point(1, 2))) is tuple and _trip(Point(1, 2)) == (1, 2)  # the value, not the class

    class Sneaky(int):
        def __eq__(self, other):
            return True

    got = _trip(Sneaky(3))
    assert type(got) is int and got == 3 and got != 4  # its __eq__ stays behind


def test_a_candidates_iterators_travel_as_their_items():
    def no_refs(obj):
        raise AssertionError(f"{obj!r} should have travelled by value")

    got = _trip((x * x for x in range(4)), ref=no_refs)
    assert list(got) == [0, 1, 4, 9]
    assert list(_trip(map(str, [1, 2]), ref=no_refs)) == ["1", "2"]
    with pytest.raises(TypeError, match="not data"):
        wire.encode(iter([1]))  # the judge's side sends data only


def test_objects_become_references_only_where_allowed():
    class Node:
        pass

    node, seen = Node(), []

    def ref(obj):
        seen.append(obj)
        return len(seen) - 1

    tree = wire.encode([node, {"n": node}], ref)
    assert tree == [{"ref": 0}, {"dict": [["n", {"ref": 1}]]}] and seen == [node, node]
    assert wire.decode(tree, lambda n: f"remote {n}") == ["remote 0", {"n": "remote 1"}]
    with pytest.raises(wire.WireError, match="reference"):
        wire.decode(tree)  # where the judge expects data only
    with pytest.raises(TypeError, match="not data"):
        wire.encode(node)  # the judge never sends its own objects
    with pytest.raises(TypeError, match="not data"):
        wire.encode(lambda: 1)


def test_cycles_and_depth_are_refused():
    loop: list = []
    loop.append(loop)
    with pytest.raises(TypeError, match="contains itself"):
        wire.encode(loop)
    deep: list = []
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(TypeError, match="deeper"):
        wire.encode(deep)
    tree = []
    for _ in range(wire.MAX_DEPTH + 5):
        tree = [tree]
    with pytest.raises(wire.WireError, match="deeper"):
        wire.decode(tree)


@pytest.mark.parametrize("tree", [
    {"tuple": [1], "set": [2]},          # two tags
    {"__reduce__": ["os.system", "id"]},  # unknown tag
    {"bytes": "zz"},                     # bad hex
    {"int": "123"},                      # not hex
    {"complex": [1, 2]},                 # ints where floats are required
    {"set": [[1, 2]]},                   # an unhashable member
    {"dict": [[[1], 2]]},                # an unhashable key
    {"dict": [[1, 2, 3]]},               # not a pair
    {"range": [0, 1, 0]},                # range() refuses step 0
    {"deque": [[1], -1]},                # negative maxlen
    {"defaultdict": ["os.system", []]},  # a factory that is not a builtin type
    {"tuple": "abc"},                    # payload not a list
    {"type": "eval"},                    # not a builtin data type
    {"ref": 0},                          # a reference where only data is allowed (no ref callback)
])
def test_hostile_trees_are_refused(tree):
    with pytest.raises(wire.WireError):
        wire.decode(tree)


@pytest.mark.parametrize("line", [b"", b"not json\n", b"[1, 2]\n", b'"a string"\n', b"[" * 100_000 + b"\n"])
def test_malformed_messages_are_refused(line):
    with pytest.raises(wire.WireError):
        wire.loads(line)
