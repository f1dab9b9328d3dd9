"""Which ``--container-image`` values pyxis can start, checked before anything is submitted.

pyxis takes a value starting with ``.`` or ``/`` for a squashfs file and anything else for a
registry reference, which it hands to enroot as ``docker://<value>`` (pyxis 0.24.0
``pyxis_slurmstepd.c``: ``strspn(image, "./") > 0`` at 1356, the ``docker://`` prefix at
728-736). So ``megatron-fork.sqsh`` is pulled from Docker Hub on every node and fails there,
and ``./megatron-fork.sqsh`` is read relative to a directory on the compute node nobody chose.
Accepted: an absolute path, or a registry reference pinned by a tag or a digest."""

import re
from pathlib import Path

_USER = r"(?:[\w.!~*'()%;:&=+$,-]+@)?"
_IMAGE = r"[a-z0-9][a-z0-9._/-]*"
_PIN = r"(?::[\w.:-]+)?(?:@sha256:[0-9a-fA-F]{64})?"
_REGISTRY = r"(?:[A-Za-z0-9.-]+(?::\d+)?[#/])?"
REFERENCE = re.compile(rf"(?:dockerd?://)?{_USER}{_REGISTRY}{_IMAGE}{_PIN}")
"""enroot's ``[USER@][REGISTRY#]IMAGE[:TAG][@DIGEST]`` (also ``REGISTRY/IMAGE``, which
enroot 4.0 reads as the registry's: ``src/docker.sh`` ``docker::_parse_uri``)."""
EXAMPLES = (
    "an absolute path to a squashfs file (/lustre/images/megatron-fork.sqsh) or a registry "
    "reference with a tag or digest (nvcr.io#org/megatron-fork:26.01, docker://..., "
    "name@sha256:...)"
)


def _is_pinned_reference(image: str) -> bool:
    """A reference enroot can parse, with a tag or digest unless its scheme is explicit."""
    if not REFERENCE.fullmatch(image):
        return False
    if image.startswith(("docker://", "dockerd://")) or "@sha256:" in image:
        return True
    return ":" in re.split(r"[#/]", image)[-1]  # a tag on the last part (not a port)


def check_container_image(image: str) -> None:
    """Raise ValueError naming what pyxis accepts; an empty value means the option is missing."""
    if not image:
        raise ValueError(f"--container-image is required for Slurm: {EXAMPLES}")
    if image.startswith("/"):
        return
    if image.endswith((".sqsh", ".squashfs")) or image.startswith("."):
        raise ValueError(
            f"--container-image {image!r} is a relative path: pyxis would pull it from a "
            f"registry or read it on the compute node; give {EXAMPLES}"
        )
    if not _is_pinned_reference(image):
        raise ValueError(f"--container-image {image!r}: give {EXAMPLES}")


def check_image_file_exists(image: str) -> None:
    """On the submit host, before submitting: a squashfs path that is not here is almost always
    a typo (the nodes read the image at this path, from a shared file system)."""
    if image.startswith("/") and not Path(image).is_file():
        raise ValueError(
            f"--container-image {image}: no such file on this host (the nodes read the image "
            "at this path: put it on a file system they share)"
        )
