"""Small files written whole or not at all: into a temporary sibling, then renamed into place,
so a crash never leaves half a file under the final name."""

import os
from pathlib import Path


def write_text_atomically(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
