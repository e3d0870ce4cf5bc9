"""What is learned per SQL text, remembered within a bound on entries *and* characters.

Hot paths remember things per statement text (its kind, its column names, its
analysis, its timing count) so that the next run skips the work. A bound on entries
alone held far more than it seemed: an application that formats values into its SQL
makes a new text per call, and 20,000 texts of 20 KB (a bulk INSERT spelled out
inline, a long report with a literal) are 400 MB. A :class:`TextMemo` stops taking
new texts once either bound is reached; a text it does not take is worked out again at
each use, which is what the bound is for.
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["MAX_MEMO_CHARS", "TextMemo"]

V = TypeVar("V")
_ABSENT: Any = object()

MAX_MEMO_CHARS = 4 * 1024 * 1024
"""Characters of text one memo holds at most (about 4 MiB of ASCII SQL)."""


class TextMemo(dict[str, V]):
    """A dict keyed by SQL text that takes new texts only within its bounds.

    Reads (``get``, ``[]``, ``in``) are the plain dict's, in C. Add with
    :meth:`remember`; a text already held is updated whatever the bounds. Writes from
    several threads may pass a bound by a few entries (checked without a lock, as
    before), never grow without one.
    """

    __slots__ = ("chars", "max_chars", "max_entries")

    def __init__(self, max_entries: int, max_chars: int = MAX_MEMO_CHARS) -> None:
        super().__init__()
        self.max_entries = max_entries
        """Texts held at most."""
        self.max_chars = max_chars
        """Characters of the texts held at most."""
        self.chars = 0
        """Characters of the texts held (lowered by :meth:`forget` and :meth:`clear`)."""

    def has_room(self, text: str) -> bool:
        """Whether :meth:`remember` would take ``text`` now."""
        return len(self) < self.max_entries and self.chars + len(text) <= self.max_chars

    def remember(self, text: str, value: V) -> bool:
        """Hold ``value`` for ``text`` if it is held already or fits; True if it does."""
        if text in self:
            self[text] = value
            return True
        if len(self) >= self.max_entries or self.chars + len(text) > self.max_chars:
            return False
        self.chars += len(text)
        self[text] = value
        return True

    def forget(self, text: str) -> None:
        """Drop what is held for ``text`` (nothing if none) and give back its characters.

        Use this, not ``pop``: a text dropped and learned again (its columns changed)
        would otherwise count twice, and the memo would fill up with nothing in it.
        """
        if self.pop(text, _ABSENT) is not _ABSENT:  # (atomic: threads may forget at once)
            self.chars -= len(text)

    def clear(self) -> None:
        """Forget every text."""
        super().clear()
        self.chars = 0
