"""llama.cpp tensor overrides (``-ot``/``--override-tensor``): ``REGEX=BUFFER_TYPE[,REGEX=BUFFER_TYPE...]``.

Shared by ``hotexperts bench llamacpp --placement`` and ``hotexperts check``: items in order, split at the
last ``=``, each regular expression checked to compile.
"""

from __future__ import annotations

import re

__all__ = ["split_tensor_overrides"]


def split_tensor_overrides(text: str) -> list[tuple[str, str]]:
    """``[(regex, buffer type), ...]`` of ``text``; ValueError naming the bad item."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        pat, eq, buft = item.rpartition("=")
        if not eq or not pat or not buft:
            raise ValueError(f"{item!r} is not REGEX=BUFFER_TYPE")
        try:
            re.compile(pat)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pat!r} ({exc})") from None
        out.append((pat, buft))
    return out
