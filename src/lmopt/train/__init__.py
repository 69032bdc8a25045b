"""Training: fine-tuning (full or LoRA; raw text or chat) and distillation, on one accelerate loop.

    from lmopt.train import TrainConfig, finetune
    result = finetune(load_model("smollm2-135m-instruct"), "corpus.txt", TrainConfig(method="lora"))

Files: `config.py` (TrainConfig, DistillConfig), `data.py` (reading rows), `examples.py` (packing,
response-only labels), `losses.py` (CE and divergences, pure math), `optim.py` (AdamW groups, schedules,
dropout), `lora.py` (peft), `loop.py` (the accelerate loop), `checkpoint.py` (resume), `callbacks.py`
(hooks), `finetune.py` and `distill.py` (the verbs), `setup.py` (the run set-up both share: data,
trainable model, loop wiring, result), `students.py` (students cut from a teacher), `step.py`
(recipe steps; the verbs `lmopt train` and `lmopt distill` are generated from them in `lmopt/cli/steps.py`).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from lmopt.train.config import DistillConfig, DistillStepConfig, TrainConfig

__all__ = [
    "DistillConfig",
    "DistillStepConfig",
    "TrainConfig",
    "TrainResult",
    "distill",
    "finetune",
    "student_from_teacher",
]

_LAZY = {
    "finetune": "lmopt.train.finetune",
    "TrainResult": "lmopt.train.setup",
    "distill": "lmopt.train.distill",
    "student_from_teacher": "lmopt.train.students",
}


def __getattr__(name: str) -> Any:  # lazy: torch-heavy modules load on first use (configs import this)
    if name not in _LAZY:
        raise AttributeError(name)
    importlib.import_module(_LAZY[name])
    # importing lmopt.train.finetune binds the *module* to the package attribute `finetune` (same for
    # distill): every verb whose module is loaded now gets its function bound instead.
    for verb, module in _LAZY.items():
        if module in sys.modules:
            globals()[verb] = getattr(sys.modules[module], verb)
    return globals()[name]
