"""The pipelines `lmopt optimize` searches: a candidate is a base model, [finetune] -> [prune] -> [quantize],
and the dtype and threads it runs with; `candidate_steps` turns one into recipe steps at a fidelity.

Steps come in that order so that candidates sharing a base and their first steps share the cached outputs
of those steps (the recipe runner keys each step by its config and its input's content hash). Optuna's
categorical parameters keep one choice list per name, so conditional choices get their own names
(`group_size` is drawn only below 8 bits, `prune_layers` only for structured pruning).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError
from lmopt.hardware import detect_hardware
from lmopt.models.load import resolve
from lmopt.select.optimize_config import FidelityConfig, OptimizeConfig, SpaceConfig

CALIBRATED = ("gptq", "awq", "rotate+gptq", "w8a8", "wanda", "sparsegpt", "structured")


@dataclass(frozen=True)
class Candidate:
    """One pipeline and its runtime settings."""

    base: str
    finetune: str = "none"
    prune: str = "none"
    prune_amount: float = 0.0
    prune_layers: int = 0
    quantize: str = "none"
    bits: int = 16
    group_size: int = 0
    lm_head_bits: int = 8
    dtype: str = "float32"
    threads: int = 1

    def label(self) -> str:
        """A short human description: `model, lora, structured mlp 0.25 -2L, gptq w4 g128, bfloat16 x2`."""
        parts = [Path(self.base).name or self.base]
        if self.finetune != "none":
            parts.append(self.finetune)
        if self.prune == "structured":
            parts.append(f"structured mlp {self.prune_amount:g}" + (f" -{self.prune_layers}L"
                                                                    if self.prune_layers else ""))
        elif self.prune != "none":
            parts.append(f"{self.prune} {self.prune_amount:g}")
        if self.quantize == "w8a8":
            parts.append("w8a8")
        elif self.quantize != "none":
            parts.append(f"{self.quantize} w{self.bits}" + (f" g{self.group_size}" if self.group_size else "")
                         + (f" head{self.lm_head_bits}" if self.lm_head_bits != 8 else ""))
        parts.append(f"{self.dtype} x{self.threads}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_config(ref: str) -> dict[str, Any] | None:
    """The config.json of a local model (None when it cannot be read, e.g. a hub id)."""
    where = resolve(ref)
    if isinstance(where, str) or not (where / "config.json").exists():
        return None
    return json.loads((where / "config.json").read_text())


@dataclass(frozen=True)
class Space:
    """The choice lists of one study (fixed for its lifetime: Optuna needs the same choices each trial)."""

    models: tuple[str, ...]
    space: SpaceConfig
    finetune: tuple[str, ...]
    prune_layers: tuple[int, ...]
    threads: tuple[int, ...]
    quantize: tuple[str, ...]
    """The space's methods, less rotate+gptq when a candidate model's type cannot be rotated."""

    @classmethod
    def build(cls, config: OptimizeConfig, models: list[str]) -> Space:
        from lmopt.compress.quantize.rotate_model import SUPPORTED  # lazy: imports torch

        space = config.space
        configs = [model_config(m) for m in models]  # None: unreadable (a hub id), given the benefit of the doubt
        depths = [d for d in (c.get("num_hidden_layers") or c.get("num_layers") for c in configs if c) if d]
        cap = min(depths) // 4 if depths else 0
        layers = tuple(n for n in space.prune_layers if n <= cap) or (0,)
        finetune = tuple(space.finetune) if config.train_data else ("none",)
        threads = tuple(space.threads or [detect_hardware().threads])
        can_rotate = all(c is None or c.get("model_type") in SUPPORTED for c in configs)
        quantize = tuple(q for q in space.quantize if q != "rotate+gptq" or can_rotate)
        if not quantize:
            raise LmoptError(f"space.quantize: only rotate+gptq, which cannot rotate these models' type "
                             f"({', '.join(SUPPORTED)} only)")
        return cls(tuple(models), space, finetune, layers, threads, quantize)


def suggest(trial: Any, space: Space) -> Candidate:
    """Draw a candidate from an Optuna trial (define-by-run: conditional parameters only when they apply)."""
    cfg = space.space
    pick = trial.suggest_categorical
    fields: dict[str, Any] = {"base": pick("base", list(space.models)), "finetune": pick("finetune",
                                                                                     list(space.finetune))}
    prune = fields["prune"] = pick("prune", list(cfg.prune))
    if prune != "none":
        fields["prune_amount"] = pick("prune_amount", list(cfg.prune_amounts))
    if prune == "structured":
        fields["prune_layers"] = pick("prune_layers", list(space.prune_layers))
    quantize = fields["quantize"] = pick("quantize", list(space.quantize))
    if quantize in ("rtn", "gptq", "awq", "rotate+gptq"):
        fields["bits"] = pick("bits", list(cfg.bits))
        if fields["bits"] < 8:
            fields["group_size"] = pick("group_size", list(cfg.group_sizes))
        fields["lm_head_bits"] = pick("lm_head_bits", list(cfg.lm_head_bits))
    elif quantize == "w8a8":
        fields["bits"] = 8
    fields["dtype"] = pick("dtype", list(cfg.dtypes))
    fields["threads"] = pick("threads", list(space.threads))
    return Candidate(**fields)


def default_params(space: Space) -> list[dict[str, Any]]:
    """Known-good first trials that fit the space: int8 per channel, 4-bit GPTQ g128 with and without a
    rotation first, structured + int8."""
    cfg = space.space
    dtype = detect_hardware().dtype if detect_hardware().dtype in cfg.dtypes else cfg.dtypes[0]
    common = {"base": space.models[0], "finetune": "none", "dtype": dtype, "threads": max(space.threads)}
    wanted = [
        {"prune": "none", "quantize": "rtn", "bits": 8, "lm_head_bits": 8},
        {"prune": "none", "quantize": "gptq", "bits": 4, "group_size": 128, "lm_head_bits": 8},
        {"prune": "none", "quantize": "rotate+gptq", "bits": 4, "group_size": 128, "lm_head_bits": 8},
        {"prune": "structured", "prune_amount": 0.25, "prune_layers": 0, "quantize": "rtn", "bits": 8,
         "lm_head_bits": 8},
    ]
    choices = {"prune": cfg.prune, "quantize": space.quantize, "bits": cfg.bits, "group_size": cfg.group_sizes,
               "prune_amount": cfg.prune_amounts, "prune_layers": space.prune_layers,
               "lm_head_bits": cfg.lm_head_bits}
    return [{**common, **params} for params in wanted
            if all(value in choices[key] for key, value in params.items())]


def _calibration(fidelity: FidelityConfig, config: OptimizeConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if fidelity.calibration_samples:
        out["n_samples"] = fidelity.calibration_samples
    if config.calibration:
        out["source"] = config.calibration
    return out


def candidate_steps(candidate: Candidate, fidelity: FidelityConfig, config: OptimizeConfig) -> list[dict[str, Any]]:
    """The recipe steps that build `candidate` at `fidelity` (empty: the base model itself)."""
    steps: list[dict[str, Any]] = []
    calibration = _calibration(fidelity, config)
    if candidate.finetune == "lora":
        steps.append({"finetune": {"method": "lora", "data": config.train_data, "max_steps": fidelity.finetune_steps,
                                   "lr": 2e-4, "seq_len": 256, "save_every": None}})
    if candidate.prune != "none":
        prune: dict[str, Any] = {"method": candidate.prune}
        if candidate.prune == "structured":
            prune.update(mlp=candidate.prune_amount, layers=candidate.prune_layers)
        else:
            prune["sparsity"] = candidate.prune_amount
        if candidate.prune in CALIBRATED and calibration:
            prune["calibration"] = dict(calibration)
        steps.append({"prune": prune})
    if candidate.quantize != "none":
        quantize: dict[str, Any] = {"method": candidate.quantize}
        if candidate.quantize != "w8a8":
            quantize.update(bits=candidate.bits, group_size=candidate.group_size, lm_head_bits=candidate.lm_head_bits)
        if candidate.quantize in CALIBRATED and calibration:
            quantize["calibration"] = dict(calibration)
        steps.append({"quantize": quantize})
    return steps
