"""A test oracle for leaked secrets: which pieces of a key can be read back from a text by the usual decodings.

Independent of :func:`am3_verl.clients.redaction.redact`: it decodes the text every way a reader (or an
attacker) would try (HTML entities, percent-encoding, JSON escapes, base64 at every alignment, and
these nested) and looks for any ``width``-character piece of the secret in the results.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
from urllib.parse import quote, unquote

_U_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}")


def _json_unescape(text: str) -> str:
    return _U_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text).replace("\\/", "/").replace("\\\\", "\\")


def decoded_views(text: str, rounds: int = 3) -> set[str]:
    """``text`` and what it becomes under every sequence of up to ``rounds`` common decodings, base64 last."""
    views = {text}
    for _ in range(rounds):
        views |= {decode(view) for view in views for decode in (html.unescape, unquote, _json_unescape)}
    for view in list(views):
        for run in _BASE64_RUN.findall(view):
            run = run.replace("-", "+").replace("_", "/")
            for start in range(4):
                chunk = run[start:][: (len(run) - start) // 4 * 4]
                try:
                    views.add(base64.b64decode(chunk).decode("latin-1"))
                except (binascii.Error, ValueError):
                    pass
    return views


def readable_pieces(text: str, secret: str, width: int = 8) -> list[str]:
    """The ``width``-character pieces of ``secret`` that some decoding of ``text`` shows (empty: none leaked)."""
    pieces = {secret[i : i + width] for i in range(len(secret) - width + 1)}
    return sorted({piece for view in decoded_views(text) for piece in pieces if piece in view})


def u_escape(text: str, upper: bool = False) -> str:
    """Every character as a JSON ``\\uXXXX`` escape."""
    return "".join(f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}" for c in text)


def lower_percent(text: str) -> str:
    """URL-encoded with lowercase hex digits (``%2f``)."""
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(text, safe=""))


ENCODINGS = {
    "raw": lambda s: s,
    "json_u_escape_first_char": lambda s: u_escape(s[0]) + s[1:],
    "json_u_escape_all_upper_hex": lambda s: u_escape(s, upper=True),
    "json_escaped_slash": lambda s: s.replace("/", "\\/"),
    "json_escaped_twice": lambda s: json.dumps(u_escape(s[:2]) + s[2:])[1:-1],
    "html_decimal_entities": lambda s: "".join(f"&#{ord(c)};" for c in s),
    "html_hex_entity_and_amp": lambda s: f"&#x{ord(s[0]):x};" + html.escape(s[1:]),
    "html_named_amp": html.escape,
    "html_escaped_twice": lambda s: html.escape(html.escape(s)),
    "percent_lowercase": lower_percent,
    "percent_every_byte": lambda s: "".join(f"%{b:02x}" for b in s.encode()),
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "base64_of_bearer_header": lambda s: base64.b64encode(f"Bearer {s}".encode()).decode(),
    "base64_urlsafe_unpadded": lambda s: base64.urlsafe_b64encode(b"x:" + s.encode()).decode().rstrip("="),
}
"""How servers have been seen to echo a key, by name: ``encode(secret) -> text``."""
