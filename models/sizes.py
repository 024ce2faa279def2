"""Image sizes: the one ``WxH`` parser and the one valid range (no torch, no numpy).

The CLI, the agent's config, the demo and the speed profile all read sizes as ``WxH``
text; the protocol schema and :class:`~dedgeai.models.backend.GenerationRequest` check
the same bounds. Callers turn :class:`SizeError` into their own context (an option's
``BadParameter``, a config key's ``ConfigError``).
"""

from __future__ import annotations

import re

from dedgeai.models.errors import InvalidRequest

MIN_SIDE_PX = 256
MAX_SIDE_PX = 2048
SIDE_MULTIPLE_PX = 16
RANGE_TEXT = f"each side a multiple of {SIDE_MULTIPLE_PX} in {MIN_SIDE_PX}-{MAX_SIDE_PX}"

_WXH = re.compile(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*", re.ASCII)


class SizeError(InvalidRequest):
    """A ``WxH`` text that is malformed or out of range; the message says what is allowed."""


def side_problem(side: int) -> str | None:
    """Why ``side`` is not a valid width or height, or None when it is."""
    if MIN_SIDE_PX <= side <= MAX_SIDE_PX and side % SIDE_MULTIPLE_PX == 0:
        return None
    return f"must be a multiple of {SIDE_MULTIPLE_PX} in [{MIN_SIDE_PX}, {MAX_SIDE_PX}]"


def parse_size(text: str, *, check_range: bool = True) -> tuple[int, int]:
    """``"512x512"`` -> ``(512, 512)``; raise SizeError on anything else.

    ``check_range=False`` only checks the shape: for keys this code wrote itself (a speed
    profile's ``steps_per_second``), where a hot path must not re-judge old data.
    """
    match = _WXH.fullmatch(text) if isinstance(text, str) else None
    size = (int(match[1]), int(match[2])) if match else None
    if size is None or (check_range and any(side_problem(side) for side in size)):
        raise SizeError(f"use WxH, {RANGE_TEXT} (such as 512x512), got {text!r}")
    return size


def format_size(width: int, height: int) -> str:
    """``(512, 512)`` -> ``"512x512"``: the key of a speed profile and the CLI's notation."""
    return f"{width}x{height}"
