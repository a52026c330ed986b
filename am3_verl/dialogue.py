"""The dialogue data model shared by data preparation, the environment, the judges and evaluation.

One InterSafe-V record is a :class:`Dialogue`: an id, a harm category (or ``"benign"``), and user
turns, each with its text, its images and an optional reference assistant reply. The JSONL form is
documented in docs/data.md ("Input formats"). Structural rules (non-empty text, one ``<image>`` placeholder
per image, a known category) are enforced here; checks that need the files (images exist and decode,
sizes, unique ids across a file) live in :mod:`am3_verl.data`.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IMAGE_PLACEHOLDER = "<image>"

HARM_CATEGORIES: tuple[str, ...] = (
    "violence",
    "weapons",
    "terrorism_extremism",
    "hate_speech",
    "harassment",
    "self_harm",
    "sexual_content",
    "child_safety",
    "illegal_drugs",
    "fraud_scams",
    "cybercrime",
    "privacy_violation",
    "misinformation",
    "dangerous_activities",
)
"""The 14 harm categories of InterSafe-V (our naming; the paper does not publish its list)."""

BENIGN = "benign"
CATEGORIES: tuple[str, ...] = HARM_CATEGORIES + (BENIGN,)


class ImageBytes(BaseModel):
    """An image given inline as encoded file bytes (PNG, JPEG, ...)."""

    model_config = ConfigDict(extra="forbid")
    bytes: bytes


ImageSource = Union[str, ImageBytes]
"""An image: a path (relative to the data file's folder, or absolute), a ``data:`` URI, or inline bytes."""


class Turn(BaseModel):
    """One user turn and, optionally, the reference assistant reply that followed it."""

    model_config = ConfigDict(extra="forbid")

    user: str
    images: list[ImageSource] = Field(default_factory=list)
    assistant: str | None = None

    @field_validator("user")
    @classmethod
    def _user_not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("user text is empty")
        return text

    @model_validator(mode="after")
    def _placeholders_match_images(self) -> "Turn":
        n_placeholders = self.user.count(IMAGE_PLACEHOLDER)
        if n_placeholders != len(self.images):
            raise ValueError(f"{n_placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the user text but {len(self.images)} image(s)")
        return self


class Dialogue(BaseModel):
    """A multi-turn multimodal dialogue: the unit of InterSafe-V, of a GRPO prompt and of evaluation."""

    model_config = ConfigDict(extra="forbid")

    id: str
    category: str
    source: str = ""
    turns: list[Turn] = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("id is empty")
        return value

    @field_validator("category")
    @classmethod
    def _category_not_blank(cls, value: str) -> str:
        # Any taxonomy is accepted (InterSafe-V's own is unpublished); only "benign" has a meaning here.
        # data_prep's --categories makes a given list strict.
        if not value.strip():
            raise ValueError("category is empty")
        return value

    @property
    def is_harmful(self) -> bool:
        """True unless the dialogue is benign."""
        return self.category != BENIGN

    @property
    def num_images(self) -> int:
        """Total number of images over all turns."""
        return sum(len(turn.images) for turn in self.turns)


RefusalDomain = Literal["general", "health", "finance"]


class RefusalSample(BaseModel):
    """One refusal-VQA sample for the cold-start SFT: an image, a question and the reference answer."""

    model_config = ConfigDict(extra="forbid")

    id: str
    image: ImageSource
    question: str
    answer: str
    domain: RefusalDomain
    short_answers: list[str] = Field(default_factory=list)
    """Accepted short answers of a benign sample, for answer-matching evaluation (``python -m am3_verl.eval
    general``); unused by training. Empty: the free-form ``answer`` is the only reference."""

    @field_validator("id", "question", "answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty")
        return value


class AssistantTurnRecord(BaseModel):
    """What the dialogue environment records for one assistant turn of a rollout.

    The agent loop writes a list of these (as plain dicts, ``model_dump()``) to
    ``extra_fields["am3_turns"]``; verl merges ``extra_fields`` into the reward function's
    ``extra_info``, where the judges read them. Turn ``t``'s context is every earlier record.
    """

    model_config = ConfigDict(extra="forbid")

    turn: int
    """0-based index of the assistant turn in the dialogue."""
    user_text: str
    """The user message this turn answers, with one ``<image>`` placeholder per image."""
    user_images: list[bytes] = Field(default_factory=list)
    """The user message's images as encoded file bytes (PNG/JPEG), in placeholder order."""
    reply: str
    """The policy's reply, decoded without special tokens."""
    span: tuple[int, int]
    """``[start, end)`` of the reply's policy tokens (mask 1) in the response token ids."""
    truncated: bool = False
    """The reply stopped because the token budget ran out, not at end-of-turn."""
    empty: bool = False
    """The reply has no visible text."""
    user_source: Literal["dataset", "simulator"] = "dataset"
    """Where the user message came from."""
