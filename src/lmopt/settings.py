"""Where lmopt keeps its state: `$LMOPT_HOME` (default `~/.cache/lmopt`) and the evaluation data dir."""

from __future__ import annotations

import os
from pathlib import Path


def lmopt_home() -> Path:
    """The cache root: converted models, step outputs, the default registry."""
    home = Path(os.environ.get("LMOPT_HOME", Path.home() / ".cache" / "lmopt")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_data_dir() -> Path | None:
    """The evaluation data dir: `$LMOPT_DATA_DIR`, else a `shared/data` next to or above the cwd.

    Returns None when there is none (the demo and the fast tests need none).
    """
    env = os.environ.get("LMOPT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    here = Path.cwd().resolve()
    for parent in [here, *here.parents][:4]:
        for cand in (parent / "shared" / "data", parent.parent / "shared" / "data"):
            if cand.is_dir():
                return cand
    return None
