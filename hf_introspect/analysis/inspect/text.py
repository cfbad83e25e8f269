"""Small text helpers shared by inspect's report builders and its renderer."""

from __future__ import annotations


def format_layers(layers: list[int]) -> str:
    """``[0, 1, 2, 5, 8, 9]`` -> ``'0-2,5,8-9'``.

    Example:
        >>> format_layers([0, 1, 2, 5, 8, 9])
        '0-2,5,8-9'
    """
    parts, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        parts.append(str(layers[i]) if i == j else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return ",".join(parts)


def truncate(text: str, n: int, tail: int = 0) -> str:
    """At most ``n`` characters of ``text``: its head, and its last ``tail`` characters if asked.

    Example:
        >>> truncate("abcdefghij", 6, tail=2)
        'abcd[...4 chars...]ij'
    """
    if len(text) <= n:
        return text
    head = n - tail
    return text[:head] + f"[...{len(text) - n} chars...]" + (text[-tail:] if tail else "")
