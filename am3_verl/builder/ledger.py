"""The cost ledger: calls, attempts, failures, tokens and images per role, summed from call records.

The records live in the checkpoints (each written together with the result it produced), so the ledger
is exact for every call whose result was kept, over all runs of an output folder; calls that were in
flight when a run was killed left no record.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from am3_verl.builder.state import CallRecord
from am3_verl.builder.store import atomic_write


@dataclass
class RoleCost:
    """The totals of one role."""

    model: str = ""
    calls: int = 0
    ok: int = 0
    failed: int = 0
    attempts: int = 0
    failures: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0

    def as_dict(self) -> dict:
        """A JSON-ready dict (keys in a fixed order)."""
        return {
            "model": self.model,
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "attempts": self.attempts,
            "failures": dict(sorted(self.failures.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "images": self.images,
        }


class Ledger:
    """Per-role totals of a set of call records."""

    def __init__(self) -> None:
        self.roles: dict[str, RoleCost] = {}

    def add(self, record: CallRecord) -> None:
        """Count one call."""
        cost = self.roles.setdefault(record.role, RoleCost(model=record.model))
        cost.calls += 1
        cost.ok += record.ok
        cost.failed += not record.ok
        cost.attempts += record.attempts
        cost.failures.update(record.failures)
        cost.prompt_tokens += record.prompt_tokens
        cost.completion_tokens += record.completion_tokens
        cost.images += record.images

    def add_all(self, records: Iterable[CallRecord]) -> "Ledger":
        """Count every record; returns self."""
        for record in records:
            self.add(record)
        return self

    @property
    def calls(self) -> int:
        """All calls."""
        return sum(c.calls for c in self.roles.values())

    @property
    def tokens(self) -> int:
        """All tokens (prompt + completion)."""
        return sum(c.prompt_tokens + c.completion_tokens for c in self.roles.values())

    def as_dict(self) -> dict:
        """``{"roles": {role: totals}, "total": {...}}``."""
        total = RoleCost(model="")
        for cost in self.roles.values():
            total.calls += cost.calls
            total.ok += cost.ok
            total.failed += cost.failed
            total.attempts += cost.attempts
            total.failures.update(cost.failures)
            total.prompt_tokens += cost.prompt_tokens
            total.completion_tokens += cost.completion_tokens
            total.images += cost.images
        totals = total.as_dict()
        del totals["model"]
        return {"roles": {role: self.roles[role].as_dict() for role in sorted(self.roles)}, "total": totals}

    def write(self, path: Path, extra: dict | None = None) -> None:
        """Save as JSON (with ``extra`` keys, e.g. this run's totals)."""
        atomic_write(path, (json.dumps({**self.as_dict(), **(extra or {})}, indent=2) + "\n").encode("utf-8"))

    def line(self) -> str:
        """``role calls/tokens`` for every role, for the summary paragraph."""
        parts = []
        for role in sorted(self.roles):
            c = self.roles[role]
            text = f"{role} {c.calls} call(s)"
            if c.failed:
                text += f" ({c.failed} failed)"
            if c.images:
                text += f", {c.images} image(s)"
            else:
                text += f", {c.prompt_tokens + c.completion_tokens} tokens"
            parts.append(text)
        return "; ".join(parts) or "no calls"
