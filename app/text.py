"""Text for people: plurals, and escaping what a client sent before it is printed to a log line
or a terminal."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """ "1 session", "2 sessions"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def escape(text: str) -> str:
    """`text` with every character that is not printable (control characters, line and paragraph
    separators, bidirectional overrides, tabs) written as its Python escape (\\r, \\x1b,
    \\u202e), so it can neither start a line nor move a terminal's cursor."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
