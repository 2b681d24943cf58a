"""Bounding and cleaning free text before anything reads it.

An instruction reaches the encoder, the attribute parser and (issue 6) an LLM prompt; here it
loses control characters and runs of whitespace and is cut to a fixed length, so a hostile or
pasted-in request costs the same as a normal one and cannot smuggle formatting into a prompt.
"""

from __future__ import annotations

import re
import unicodedata

from recdata.errors import InvalidRequestError

MAX_INSTRUCTION_CHARS = 1000
_SPACE = re.compile(r"\s+")


def clean_instruction(text: object, max_chars: int = MAX_INSTRUCTION_CHARS) -> str:
    """The instruction without control/format characters, whitespace collapsed. Raises on a
    non-string, an empty result, or text longer than `max_chars` (rejected rather than
    silently cut, so the caller knows what was scored)."""
    if not isinstance(text, str):
        raise InvalidRequestError(f"instruction must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        raise InvalidRequestError(
            f"instruction is {len(text)} characters; the limit is {max_chars}")
    kept = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text)
    cleaned = _SPACE.sub(" ", kept).strip()
    if not cleaned:
        raise InvalidRequestError("instruction is empty")
    return cleaned
