"""Matplotlib figures written like every other file of a report: to a temporary sibling, then
renamed into place, so a crash never leaves half a PNG under the final name."""

import os
from pathlib import Path


def save_figure(fig, path, dpi: int = 100) -> Path:
    """Save ``fig`` as a PNG at ``path`` and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
