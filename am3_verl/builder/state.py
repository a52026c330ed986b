"""What the builder remembers about one seed between calls: the checkpoint schema.

An :class:`ItemState` is saved after every model call (see :mod:`am3_verl.builder.store`), so a
crash, a Ctrl-C or a ``kill -9`` loses at most the calls that were in flight. Each stage reads what is
already there and makes only the calls still missing:

* ``new`` -> decompose -> ``decomposed`` -> interact -> ``interacted`` -> clean -> ``cleaned``;
* ``dropped`` (a quality decision, final: ``drop`` says where and why);
* ``failed`` is not a status but a note on the item (``failure``): a call kept failing after its
  retries; the next run clears it and continues from the last checkpoint.

Every call the item made is in ``calls`` (the cost ledger is their sum), written atomically with the
result it produced.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["new", "decomposed", "interacted", "cleaned", "dropped"]
STAGES: tuple[str, ...] = ("decompose", "interact", "clean")


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CallRecord(_State):
    """One model or text-to-image call (all its attempts together)."""

    role: str
    """``decomposer``, ``scorer``, ``attacker``, ``victim:<name>``, ``judge``, ``text_to_image``, ``writer``."""
    model: str
    stage: str
    ok: bool
    attempts: int
    failures: dict[str, int] = Field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    """Images received (text-to-image calls)."""
    request_sha: str
    """sha256 of the request's model and messages (or prompt): identifies a repeated call."""
    elapsed_s: float = 0.0
    error: str | None = None


class Candidate(_State):
    """One version of a sub-query and its review."""

    text: str
    scores: dict[str, float]
    """Normalised ([0, 1]) score per criterion."""
    rationale: str
    passed: bool


class SubQueryState(_State):
    """A sub-query through review and rewrites."""

    candidates: list[Candidate] = Field(default_factory=list)
    """Every reviewed version, oldest first; the last one is current."""
    pending: str | None = None
    """A version written but not reviewed yet."""

    @property
    def accepted(self) -> Candidate | None:
        """The version that passed review, if any."""
        return self.candidates[-1] if self.candidates and self.candidates[-1].passed else None


class DecomposeState(_State):
    """The decompose stage's progress."""

    proposed: list[str] | None = None
    """The decomposer's first answer."""
    sub_queries: list[SubQueryState] = Field(default_factory=list)

    def final_texts(self) -> list[str]:
        """The accepted sub-queries, in order (only meaningful once the stage is done)."""
        return [sq.accepted.text for sq in self.sub_queries if sq.accepted is not None]


class TurnState(_State):
    """One user turn of a dialogue: the attacker's move, its picture, the victim's reply."""

    message: str
    image: Literal["none", "seed", "new"]
    image_description: str = ""
    denied_new_image: bool = False
    """The attacker asked for a new picture beyond the budget (or with text-to-image disabled)."""
    image_blob: str | None = None
    """Blob name of the picture shown with this turn (seed or drawn); None for text-only or not drawn yet."""
    victim_reply: str | None = None


class RemovedImage(_State):
    """A near-duplicate image taken out of a dialogue by the clean stage."""

    turn: int
    duplicate_of_turn: int
    distance: int
    """Bits the two perceptual hashes differ in."""


class DialogueState(_State):
    """One (seed, victim) dialogue."""

    victim: str
    turns: list[TurnState] = Field(default_factory=list)
    interacted: bool = False
    removed_images: list[RemovedImage] | None = None
    verdict: dict[str, Any] | None = None
    """The judge's :class:`~am3_verl.builder.answers.RiskVerdict` as a dict."""
    kept: bool | None = None
    drop_reason: str | None = None


class Failure(_State):
    """Why the last run could not finish this item (a call failed after all retries)."""

    stage: str
    role: str
    error: str


class Drop(_State):
    """Why the item was dropped (final)."""

    stage: str
    reason: str


class ItemState(_State):
    """Everything the builder knows about one seed."""

    seed_id: str
    position: int
    """The seed's position in the seeds file when it was first read."""
    seed_sha: str
    """Hash of the seed's query, category, source and image bytes: a changed seed is detected."""
    query: str
    category: str
    source: str
    seed_image_blob: str
    status: Status = "new"
    drop: Drop | None = None
    failure: Failure | None = None
    decompose: DecomposeState = Field(default_factory=DecomposeState)
    dialogues: dict[str, DialogueState] = Field(default_factory=dict)
    calls: list[CallRecord] = Field(default_factory=list)
