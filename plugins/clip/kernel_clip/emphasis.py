"""The AUTOMATIC1111 emphasis syntax: ``(word)``, ``[word]``, ``(word:1.3)``.

Rules (those of the stable-diffusion-webui prompt parser):

* ``( ... )`` multiplies the weight of what it encloses by 1.1, ``[ ... ]`` divides it by 1.1;
  brackets nest, so ``((word))`` is 1.21;
* ``( ... :1.3)`` sets a factor of 1.3 instead of 1.1 (the number may be signed and have a
  decimal point; spaces around it are allowed);
* ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are the literal characters; a backslash before
  anything else is kept as a literal backslash (A1111 drops it; keeping it loses nothing);
* a closing bracket with no opener, and ``:`` not followed by ``number)`` inside a round
  bracket, are literal text;
* brackets still open at the end apply to everything after them;
* neighbouring pieces of equal weight are merged; an empty prompt is ``[("", 1.0)]``.
"""

from __future__ import annotations

import re

ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1

_ESCAPABLE = "()[]\\"
_SPECIAL = set("()[]\\:")
_WEIGHT = re.compile(r":\s*([+-]?[.\d]+)\s*\)")


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into ``(piece, weight)`` pairs following the rules in the module docstring."""
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    pieces: list[list] = []  # [text, weight]; weights are scaled in place when a bracket closes
    open_round: list[int] = []  # index of the first piece inside each open "("
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            if i + 1 < n and text[i + 1] in _ESCAPABLE:
                pieces.append([text[i + 1], 1.0])
                i += 2
            else:
                pieces.append(["\\", 1.0])
                i += 1
        elif ch == "(":
            open_round.append(len(pieces))
            i += 1
        elif ch == "[":
            open_square.append(len(pieces))
            i += 1
        elif ch == ")" and open_round:
            scale_from(open_round.pop(), ROUND_FACTOR)
            i += 1
        elif ch == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_FACTOR)
            i += 1
        elif ch == ":":
            match = _WEIGHT.match(text, i)
            weight = _as_float(match.group(1)) if match else None
            if weight is not None and open_round:
                scale_from(open_round.pop(), weight)
                i = match.end()
            else:
                pieces.append([":", 1.0])
                i += 1
        elif ch in ")]":
            pieces.append([ch, 1.0])
            i += 1
        else:
            j = i + 1
            while j < n and text[j] not in _SPECIAL:
                j += 1
            pieces.append([text[i:j], 1.0])
            i = j

    for start in open_round:
        scale_from(start, ROUND_FACTOR)
    for start in open_square:
        scale_from(start, SQUARE_FACTOR)

    merged: list[tuple[str, float]] = []
    for piece, weight in pieces:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


def escape_emphasis(text: str) -> str:
    """``text`` with every bracket and backslash escaped, so it parses to itself at weight 1."""
    return "".join("\\" + c if c in _ESCAPABLE else c for c in text)


def _as_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:  # e.g. "1.2.3" or "."
        return None
