"""`export(model, ExportConfig)`: write a model in a runtime's format, read it back, record parity.

```python
from lmopt.export import ExportConfig, export
result = export("runs/gptq-w4", ExportConfig(format="gguf", type="q4_1", output="model.gguf"))
result.parity  # {"perplexity_change": ..., "top1_agreement": ..., "passed": ...}
```
Every export is written under a temporary name and renamed when complete; then the parity check
reads it back with an independent reader (gguf_check, onnx_export, vllm_export) and the lineage card
(`lmopt.json` in a directory, `<file>.lmopt.json` beside a GGUF file) records config, what each
tensor became and the parity figures.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmopt.compress.quantize.apply import prepare_runtime, quant_layers
from lmopt.errors import LmoptError
from lmopt.export.config import ExportConfig
from lmopt.export.gguf_check import gguf_metadata, gguf_parity
from lmopt.export.gguf_export import check_architecture, write_gguf
from lmopt.export.gguf_tensors import auto_type, head_type
from lmopt.export.gguf_vocab import inherited_pre_tokenizer, recognize_pre_tokenizer
from lmopt.export.onnx_export import export_onnx
from lmopt.export.parity import parity_text
from lmopt.export.vllm_export import export_vllm
from lmopt.io import write_json
from lmopt.models import LoadedModel, ModelCard, load_model

SUFFIX = {"gguf": ".gguf", "onnx": "-onnx", "vllm": "-vllm"}


@dataclass
class ExportResult:
    """Where the export went and what was measured on it."""

    path: Path
    format: str
    type: str
    card_path: Path
    parity: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    """Format-specific report: tensor types and notes (gguf), exporter and opset (onnx), scheme (vllm)."""
    size_mb: float | None = None
    seconds: float = 0.0

    def metrics(self) -> dict[str, Any]:
        """Flat figures for a step's metrics / the registry."""
        flat = {f"parity_{k}": v for k, v in self.parity.items() if isinstance(v, int | float | bool)}
        return {"format": self.format, "type": self.type, "path": str(self.path), "size_mb": self.size_mb,
                "export_seconds": self.seconds, **flat}


def export(model: str | Path | LoadedModel, config: ExportConfig | None = None,
           base_dir: Path | None = None) -> ExportResult:
    """Export `model` (a reference `load_model` takes, or a LoadedModel) as `config` says."""
    config = config or ExportConfig()
    started = time.time()
    loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype="float32")
    if quant_layers(loaded.model):
        prepare_runtime(loaded.model, "dequant")  # the exact reference: what lmopt's codes compute
    name = config.name or loaded.card.name or Path(str(loaded.ref)).name
    if config.format == "gguf" and config.type == "auto":  # name the file after the type it gets
        config = config.model_copy(update={"type": auto_type(loaded.model)})
    path = output_path(config, name, base_dir)
    text = parity_text(config.parity, base_dir) if config.parity.enabled else ""
    writer = _writer(config.format)
    details, parity = writer(loaded, path, config, name, text)
    if parity.get("passed") is False and config.parity.fail:
        _remove(path)
        raise LmoptError(f"{path}: parity goal missed ({_summary(parity)}); export removed")
    card = ModelCard(name=f"{name}-{config.format}-{details.get('type', config.type)}", parent=str(loaded.ref),
                     parent_hash=loaded.hash, step="export", config=config.to_dict(), format=config.format,
                     format_info=details, metrics={"parity": parity})
    card_path = path / "lmopt.json" if path.is_dir() else path.with_name(path.name + ".lmopt.json")
    write_json(card_path, card.model_dump(mode="json"))
    return ExportResult(path, config.format, details.get("type", config.type), card_path, parity, details,
                        _size_mb(path), round(time.time() - started, 2))


def output_path(config: ExportConfig, name: str, base_dir: Path | None = None) -> Path:
    """The output path, checked before any work: one that exists needs `force`."""
    if config.output is None:
        path = Path(f"{name}-{config.type}{SUFFIX[config.format]}")
    else:
        path = Path(config.output).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    if config.format == "gguf" and path.suffix != ".gguf":
        raise LmoptError(f"output: {path}: a GGUF export is one file ending in .gguf")
    if path.exists() and not config.force:
        raise LmoptError(f"output: {path} already exists (pass --force to replace it)")
    if path.exists() and config.format == "gguf" and path.is_dir():
        raise LmoptError(f"output: {path} is a directory, not a .gguf file")
    return path


def _writer(fmt: str) -> Any:
    return {"gguf": _gguf, "onnx": export_onnx, "vllm": export_vllm}[fmt]


def _gguf(loaded: LoadedModel, path: Path, config: ExportConfig, name: str, text: str) -> tuple[dict, dict]:
    check_architecture(loaded.model)
    main = auto_type(loaded.model) if config.type == "auto" else config.type
    pre = (config.pre_tokenizer or inherited_pre_tokenizer(loaded.card)
           or recognize_pre_tokenizer(loaded.tokenizer))
    if pre is None:
        raise LmoptError("pre_tokenizer: the tokenizer's splitting is not one lmopt recognizes; name "
                         "llama.cpp's pre-tokenizer (e.g. gpt-2, llama-bpe, smollm) with --pre-tokenizer")
    report = write_gguf(loaded.model, loaded.tokenizer, path, main, head_type(main, config.head_type),
                        config.requantize, name, pre)
    details = {"type": main, **report, "metadata": gguf_metadata(path), "calibration": _calibration(report)}
    if not config.parity.enabled:
        return details, {}
    parity = gguf_parity(path, loaded.model, loaded.tokenizer, text, config.parity, _kind(main, report))
    return details, parity


def _kind(main: str, report: dict[str, Any]) -> str:
    """Which parity goal applies: float types, code for code, q8_0, or none (re-quantized 4-bit)."""
    hows = {key.split(":")[1] for key in report["tensor_types"]}
    if main in ("f32", "f16", "bf16"):
        return main
    if "exact" in hows and not hows & {"rtn", "requantized"}:
        return "exact"
    return main if main == "q8_0" else "rtn-4bit"


def _calibration(report: dict[str, Any]) -> str:
    """What became of lmopt's quantization grid: kept code for code, re-quantized, or none was there.
    Float tensors (embeddings, an unquantized head) rounded to a GGUF type are named apart: rounding
    them says nothing about the calibrated linears."""
    counts: dict[str, int] = {}
    for key, n in report["tensor_types"].items():
        how = key.split(":")[1]
        counts[how] = counts.get(how, 0) + n
    rounded = (f"; {counts['rtn']} float tensor(s) (embeddings or head) rounded to nearest"
               if counts.get("rtn") else "")
    if counts.get("requantized"):
        return (f"lost: {counts['requantized']} quantized tensor(s) re-quantized by round-to-nearest (gguf's "
                f"reference quantizer, as llama.cpp's own), no calibration carried over{rounded}")
    if counts.get("exact"):
        return f"kept: {counts['exact']} quantized tensor(s) written code for code from lmopt's grid{rounded}"
    if counts.get("rtn"):
        return "none: float weights rounded to nearest (as llama.cpp's own quantizer)"
    return "none (float weights)"


def _summary(parity: dict[str, Any]) -> str:
    return (f"perplexity change {parity.get('perplexity_change')}, "
            f"top-1 agreement {parity.get('top1_agreement')}")


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 2)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
