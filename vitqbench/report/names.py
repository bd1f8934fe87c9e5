"""File names made from user-chosen names (OOD sets, model labels, scores): safe and never shared."""

from __future__ import annotations

import re


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_.") or "x"


def unique_slugs(names: list[str]) -> dict[str, str]:
    """Each distinct name -> a file-name slug no other name gets (``a b`` and ``a_b`` -> ``a_b``, ``a_b-2``)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in dict.fromkeys(names):
        base = candidate = slug(name)
        n = 1
        while candidate.lower() in taken:  # case-insensitive file systems too
            n += 1
            candidate = f"{base}-{n}"
        taken.add(candidate.lower())
        out[name] = candidate
    return out
