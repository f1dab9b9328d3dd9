"""The megatron-core versions the CPU patches were verified on, and the check that enforces it.

The patches reach into megatron-core internals (module globals, hard-coded devices); on a version
nobody checked they could silently do nothing or patch the wrong thing, so we refuse instead.
"""

from importlib.metadata import PackageNotFoundError, version

VERIFIED_MEGATRON_CORE_VERSIONS: tuple[str, ...] = ("0.16.1",)


class UnverifiedMegatronVersionError(RuntimeError):
    """megatron-core is missing or at a version the CPU backend was not verified on."""


def installed_megatron_core_version() -> str | None:
    try:
        return version("megatron-core")
    except PackageNotFoundError:
        return None


def check_megatron_core_version(installed: str | None = None) -> str:
    """Return the installed megatron-core version, or raise if it was not verified."""
    installed = installed if installed is not None else installed_megatron_core_version()
    if not installed:
        raise UnverifiedMegatronVersionError(
            "megatron-core is not installed; the CPU backend needs one of "
            f"{VERIFIED_MEGATRON_CORE_VERSIONS} (pip install megatron-core==0.16.1)."
        )
    if installed not in VERIFIED_MEGATRON_CORE_VERSIONS:
        raise UnverifiedMegatronVersionError(
            f"megatron-core {installed} is installed, but the CPU backend was only verified on "
            f"{VERIFIED_MEGATRON_CORE_VERSIONS}. Install a verified version "
            "(pip install megatron-core==0.16.1), or verify the patches in "
            "megatron_fork/backends/cpu/ against this version and add it to "
            "VERIFIED_MEGATRON_CORE_VERSIONS."
        )
    return installed
