"""Where HiCo keeps runs, caches and the embedded default: $HICO_HOME, else ~/.hico."""

from __future__ import annotations

import os
from pathlib import Path


def hico_home() -> Path:
    return Path(os.environ.get("HICO_HOME") or "~/.hico").expanduser()


def expand_path(path: str | Path) -> Path:
    """Expand ~ and $VARIABLES in a user's path; $HICO_HOME is known even when unset."""
    text = str(path).replace("$HICO_HOME", str(hico_home())).replace("${HICO_HOME}", str(hico_home()))
    return Path(os.path.expandvars(text)).expanduser()
