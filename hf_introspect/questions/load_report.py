"""What loading questions did: rows read, usable, skipped (and why), selected."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class QuestionLoadReport:
    """What :func:`load_questions` did: how many rows it read, loaded, skipped (and why), selected.

    >>> r = QuestionLoadReport(source="file:q.jsonl", form="triviamc", rows=3, usable=2,
    ...                        skipped={"fewer than 4 options": 1}, skipped_ids={"fewer than 4 options": ["q3"]})
    >>> r.skipped_total
    1
    >>> r.summary()
    'file:q.jsonl (triviamc form): 3 rows, 2 usable, 1 skipped (1 fewer than 4 options, e.g. q3); options kept in source order'
    """

    source: str
    form: str
    rows: int = 0
    usable: int = 0
    selected: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_ids: dict[str, list[str]] = field(default_factory=dict)  # first few ids per reason
    shuffled: bool = False
    seed: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def reasons(self) -> str:
        """``"N reason; M reason"`` for the skipped rows (``"no rows"`` when none were read)."""
        return "; ".join(f"{n} {reason}" for reason, n in self.skipped.items()) or "no rows"

    def summary(self) -> str:
        """One line for logs and ``dataset.info.description``."""
        text = f"{self.source} ({self.form} form): {self.rows} rows, {self.usable} usable"
        if self.skipped:
            parts = [f"{n} {reason}, e.g. {', '.join(self.skipped_ids.get(reason, []))}"
                     for reason, n in self.skipped.items()]
            text += f", {self.skipped_total} skipped ({'; '.join(parts)})"
        if self.selected and self.selected != self.usable:
            text += f", {self.selected} selected"
        text += f"; options shuffled with seed {self.seed}" if self.shuffled else "; options kept in source order"
        return text
