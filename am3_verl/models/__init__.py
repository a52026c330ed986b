"""Base-model support that verl 0.9.1 lacks: LLaVA-NeXT (:mod:`am3_verl.models.llava_next`).

:func:`register` activates every model-family extension; it is idempotent and a no-op for the model
families verl already supports.
"""

from __future__ import annotations

from am3_verl.models import llava_next


def register() -> None:
    """Activate the LLaVA-NeXT support (see :func:`am3_verl.models.llava_next.register`)."""
    llava_next.register()


def is_registered() -> bool:
    """Whether :func:`register` has taken effect in this process."""
    return llava_next.is_registered()
