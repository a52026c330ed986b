"""verl plugin entry point (group ``verl.plugins``): registers am3-verl's extensions with verl.

``import verl`` imports this module in every process that imports verl (driver, Ray workers), and
swallows any exception it raises, so it stays light and :func:`assert_loaded` lets tests and
``make setup`` prove the registration really happened.
"""

from __future__ import annotations

from am3_verl import advantage, compat, hf_rollout, models
from am3_verl.env import registration as agent_loop_registration
from am3_verl.local import cpu_platform

REGISTERED_PLATFORM = cpu_platform.PLATFORM_NAME


def register_all() -> None:
    """Register every am3-verl extension with verl's registries; safe to call more than once.

    Raises :class:`am3_verl.compat.UnsupportedVerlVersion` on a verl release it was not written for.
    """
    compat.check_verl_version()
    cpu_platform.register()  # before the compat patches: they import verl modules that ask for the platform
    compat.apply(cpu_platform=cpu_platform.cpu_platform_selected())
    hf_rollout.register()
    agent_loop_registration.register()
    advantage.register()
    models.register()


def assert_loaded() -> None:
    """Raise ``RuntimeError`` unless verl's registries hold what :func:`register_all` registers."""
    from verl.plugin.platform import PlatformRegistry

    missing = []
    if PlatformRegistry.get(REGISTERED_PLATFORM) is None:
        missing.append(f"platform {REGISTERED_PLATFORM!r}")
    if not agent_loop_registration.is_registered():
        missing.append(f"agent loop {agent_loop_registration.AGENT_NAME!r}")
    missing.extend(advantage.missing_registrations())
    if not hf_rollout.is_registered():
        missing.append(f"rollout backend {hf_rollout.ROLLOUT_NAME!r}")
    if not models.is_registered():
        missing.append("LLaVA-NeXT hf_processor binding (am3_verl.models)")
    if missing:
        raise RuntimeError(
            "am3-verl plugin not loaded by `import verl` (missing: " + ", ".join(missing) + "). "
            "Is am3-verl installed in this environment, and is VERL_USE_EXTERNAL_PLUGINS unset or 'auto'?"
        )


register_all()
