"""The ``trainer.am3`` settings of the am3 trainer modes: the judge-failure budget and the startup probe.

Given on the command line with hydra's ``+`` prefix (verl's trainer section has no such keys)::

    +trainer.am3.max_judge_failure_rate=0.2 +trainer.am3.max_judge_failed_steps=2 +trainer.am3.probe_judge=True

The recipes name all three. Defaults, for a command that names none:

* ``max_judge_failure_rate`` 0.2: a turn the judge failed on gets no score, so it adds nothing to its
  dialogue's reward and no signal to its group. Up to a fifth of a step's turns lost to transient errors
  still leaves most groups with a full set of scores; a step past that moves the policy mostly by its KL
  and entropy terms, i.e. it trains on nothing.
* ``max_judge_failed_steps`` 2: one bad step is an outage longer than the retries (a restart of the
  judge server); two in a row is a judge that is gone.
* ``probe_judge`` True: one judge call before the workers start, so a wrong URL or key stops the run in
  seconds rather than after the first rollout batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONFIG_KEY = "am3"
"""Name of the sub-section of ``trainer`` that holds :class:`Am3TrainerConfig`."""


class Am3TrainerConfig(BaseModel):
    """``trainer.am3``: when a run stops because its judge failed, and whether the judge is probed at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_judge_failure_rate: float = Field(0.2, ge=0.0, lt=1.0)
    """A step whose fraction of judge-failed turns exceeds this counts as a failed step."""
    max_judge_failed_steps: int = Field(2, ge=1)
    """The run stops (after saving a checkpoint) at this many failed steps in a row."""
    probe_judge: bool = True
    """Call the judge once before the workers start; a judge that does not answer stops the run there."""

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None) -> "Am3TrainerConfig":
        """Read ``trainer.am3`` (a ``DictConfig``, a dict or None for all defaults); raises ``ValueError``
        naming the key for an unknown key or a bad value."""
        values = dict(section or {})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(f"trainer.am3.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(problems) from None
