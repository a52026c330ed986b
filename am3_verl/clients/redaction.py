"""Secrets out of text: :func:`redact` finds a key however a server's answer or error text encodes it.

The one place keys are redacted (the transport applies it to every error text, answer and log line).
"""

from __future__ import annotations

import base64
import functools
import html
import re

SECRET_REPLACEMENT = "***"

_ESCAPE = re.compile(
    r"\\u[0-9a-fA-F]{4}"  # JSON \uXXXX
    r'|\\["\\/bfnrt]'  # JSON short escapes, \/ among them
    r"|&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"  # HTML character references
    r"|%[0-9a-fA-F]{2}"  # percent-encoding, either case
)
_JSON_SHORT = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_DECODE_ROUNDS = 4
"""Nesting depth of escapes undone (a key JSON-escaped inside an escaped JSON string is two)."""
_MIN_BASE64_NEEDLE = 8
"""Shortest base64 piece of a key that is matched: shorter ones would also hit ordinary text."""


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``, however the text encodes it.

    The key is found in the text as it is, and in the text with its escapes undone (JSON ``\\uXXXX`` and
    ``\\/``-style escapes, HTML character references, percent-encoding in either case; nested ones too,
    and any mix of escaped and plain characters); its base64 forms are found at any alignment (so inside
    an encoded ``Bearer <key>`` or ``user:<key>`` too). What is replaced is the stretch of the original
    text that spells the key, whole escapes included."""
    for secret in secrets:
        if secret and text:
            text = _redact_one(text, secret)
    return text


def _redact_one(text: str, secret: str) -> str:
    needles = _needles(secret)
    fold = " " in secret  # form encoding writes a space as "+": match both
    spans = _occurrences(text, needles, fold)
    if ("\\" in text or "&" in text or "%" in text) and _occurrences(_unescaped(text), needles, fold):
        # the key is there, escaped: only now map each decoded character back to the text it came from
        decoded, starts, ends = _unescaped_with_origins(text)
        spans += [(starts[start], ends[end - 1]) for start, end in _occurrences(decoded, needles, fold)]
    if not spans:
        return text
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, position = [], 0
    for start, end in merged:
        out += [text[position:start], SECRET_REPLACEMENT]
        position = end
    out.append(text[position:])
    return "".join(out)


def _occurrences(text: str, needles: tuple[str, ...], fold: bool) -> list[tuple[int, int]]:
    """``(start, end)`` of every occurrence of every needle in ``text`` (with ``fold``, a space matches ``+``)."""
    haystack = text.replace(" ", "+") if fold else text
    found = []
    for needle in needles:
        start = haystack.find(needle)
        while start != -1:
            found.append((start, start + len(needle)))
            start = haystack.find(needle, start + 1)
    return found


@functools.lru_cache(maxsize=64)
def _needles(secret: str) -> tuple[str, ...]:
    """What spells ``secret``: the key, the key with its own escapes undone, its whole base64 forms, and
    for each of the three byte alignments the part of its base64 that only the key's bits decide."""
    found = {secret, _unescaped(secret)}
    raw = secret.encode("utf-8")
    whole = base64.b64encode(raw).decode()
    found |= {whole, whole.rstrip("=")}
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        # character i holds bits [6i, 6i + 6): keep those inside the key's bits [8 * offset, 8 * (offset + len))
        middle = encoded[-(-8 * offset // 6) : 8 * (offset + len(raw)) // 6]
        if len(middle) >= _MIN_BASE64_NEEDLE:
            found.add(middle)
    found |= {form.translate(_URLSAFE) for form in list(found)}
    if " " in secret:
        found = {form.replace(" ", "+") for form in found}
    return tuple(sorted(found - {""}, key=len, reverse=True))


_URLSAFE = str.maketrans("+/", "-_")


def _unescaped(text: str) -> str:
    """``text`` with its escapes undone, up to :data:`_DECODE_ROUNDS` levels deep."""
    for _ in range(_DECODE_ROUNDS):
        decoded = _ESCAPE.sub(lambda match: _unescape(match.group()) or match.group(), text)
        if decoded == text:
            break
        text = decoded
    return text


def _unescaped_with_origins(text: str) -> tuple[str, list[int], list[int]]:
    """:func:`_unescaped` of ``text``, and for each of its characters the start and end in ``text`` of
    what it was decoded from."""
    starts, ends = list(range(len(text))), list(range(1, len(text) + 1))
    for _ in range(_DECODE_ROUNDS):
        chars: list[str] = []
        new_starts: list[int] = []
        new_ends: list[int] = []
        position = 0
        for match in _ESCAPE.finditer(text):
            char = _unescape(match.group())
            if char is None:
                continue
            start, end = match.span()
            chars += [text[position:start], char]
            new_starts += starts[position:start] + [starts[start]]
            new_ends += ends[position:start] + [ends[end - 1]]
            position = end
        if position == 0:
            break
        chars.append(text[position:])
        text, starts, ends = "".join(chars), new_starts + starts[position:], new_ends + ends[position:]
    return text, starts, ends


def _unescape(escape: str) -> str | None:
    """The one character ``escape`` (one :data:`_ESCAPE` match) stands for, or None."""
    if escape[0] == "%":
        return chr(int(escape[1:], 16))
    if escape[0] == "\\":
        return chr(int(escape[2:], 16)) if escape[1] == "u" else _JSON_SHORT[escape[1]]
    char = html.unescape(escape)
    return char if len(char) == 1 else None
