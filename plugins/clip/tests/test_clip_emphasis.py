"""The A1111 emphasis parser."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_clip.emphasis import escape_emphasis, parse_emphasis

R = 1.1


def approx(pairs):
    return [(t, pytest.approx(w)) for t, w in pairs]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", [("", 1.0)]),
        ("a cat", [("a cat", 1.0)]),
        ("(cat)", [("cat", R)]),
        ("((cat))", [("cat", R * R)]),
        ("[cat]", [("cat", 1 / R)]),
        ("[[cat]]", [("cat", 1 / R / R)]),
        ("a (cat:1.5) dog", [("a ", 1.0), ("cat", 1.5), (" dog", 1.0)]),
        ("(cat: 0.5 )", [("cat", 0.5)]),
        ("(cat:-1)", [("cat", -1.0)]),
        ("(cat:+.5)", [("cat", 0.5)]),
        ("((a:2) b)", [("a", 2 * R), (" b", R)]),
        ("(a [b] c)", [("a ", R), ("b", 1.0), (" c", R)]),
        ("(a (b:2))", [("a ", R), ("b", 2 * R)]),
        (r"\(cat\)", [("(cat)", 1.0)]),
        (r"\[x\] \\ y", [("[x] \\ y", 1.0)]),
        (r"a\b", [("a\\b", 1.0)]),
        ("a) b]", [("a) b]", 1.0)]),
        ("(a", [("a", R)]),
        ("[a", [("a", 1 / R)]),
        ("a:1.5)", [("a:1.5)", 1.0)]),
        ("(a:b)", [("a:b", R)]),
        ("(a:1.2.3)", [("a:1.2.3", R)]),
        ("(a:.)", [("a:.", R)]),
        ("[a:1.5]", [("a:1.5", 1 / R)]),
        ("(a)(b)", [("ab", R)]),
        ("()", [("", 1.0)]),
        ("a (b", [("a ", 1.0), ("b", R)]),
        ("(a:1.3) (b:1.3)", [("a", 1.3), (" ", 1.0), ("b", 1.3)]),
        ("((a) [b])", [("a", R * R), (" ", R), ("b", 1.0)]),
    ],
)
def test_examples(text, expected):
    assert parse_emphasis(text) == approx(expected)


def test_rejects_non_str():
    with pytest.raises(TypeError, match="prompt"):
        parse_emphasis(3)


# A random emphasis tree: leaves are words, nodes are ( ), [ ] or (x:w).
WORDS = st.text(alphabet="abc xyz,.!", min_size=1, max_size=6)
FACTORS = st.sampled_from([0.5, 0.8, 1.2, 1.25, 2.0, 1.5])


def _node(children):
    kind = st.sampled_from(["round", "square", "weight"])
    return st.tuples(kind, FACTORS, st.lists(children, min_size=1, max_size=3))


TREE = st.lists(st.recursive(WORDS, _node, max_leaves=8), min_size=1, max_size=4)


def _render(items, weight, out):
    """Render a tree to prompt text, recording the expected weight of every character."""
    text = ""
    for item in items:
        if isinstance(item, str):
            text += item
            out.extend((c, weight) for c in item)
            continue
        kind, factor, children = item
        if kind == "round":
            text += "(" + _render(children, weight * R, out) + ")"
        elif kind == "square":
            text += "[" + _render(children, weight / R, out) + "]"
        else:
            text += "(" + _render(children, weight * factor, out) + f":{factor})"
    return text


def _chars(pairs):
    return [(c, w) for t, w in pairs for c in t]


@settings(max_examples=200, deadline=None)
@given(TREE)
def test_tree_round_trip(tree):
    expected: list = []
    text = _render(tree, 1.0, expected)
    got = _chars(parse_emphasis(text))
    assert "".join(c for c, _ in got) == "".join(c for c, _ in expected)
    for (c1, w1), (c2, w2) in zip(got, expected):
        assert math.isclose(w1, w2, rel_tol=1e-9), (text, c1, w1, w2)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_escaped_text_parses_to_itself(text):
    pairs = parse_emphasis(escape_emphasis(text))
    assert pairs == [(text, 1.0)]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab ()[]:\\1.5", max_size=30))
def test_any_text_parses(text):
    pairs = parse_emphasis(text)
    assert pairs and all(isinstance(t, str) and isinstance(w, float) for t, w in pairs)
    # merged: neighbours always differ in weight
    assert all(a[1] != b[1] for a, b in zip(pairs, pairs[1:]))
    # nothing is invented: the output text is a subsequence of the input characters
    it = iter(text)
    assert all(c in it for c in "".join(t for t, _ in pairs))


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="abc xyz", max_size=30))
def test_plain_text_unchanged(text):
    assert parse_emphasis(text) == [(text, 1.0)]
