"""lmopt: make a pretrained transformer language model better and cheaper, every step measured.

The public API is imported lazily so that `import lmopt` stays instant (no torch at import time).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "load_model": "lmopt.models",
    "save_model": "lmopt.models",
    "LoadedModel": "lmopt.models",
    "tiny_llama": "lmopt.models",
    "perplexity": "lmopt.evaluate",
    "evaluate": "lmopt.evaluate",
    "benchmark_speed": "lmopt.evaluate",
    "load_text": "lmopt.data",
    "detect_hardware": "lmopt.hardware",
    "Registry": "lmopt.monitor",
    "run_recipe": "lmopt.pipeline",
    "Recipe": "lmopt.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmopt' has no attribute {name!r}")


__all__ = sorted(_EXPORTS) + ["__version__"]
