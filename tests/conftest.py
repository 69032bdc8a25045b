"""Shared fixtures: tiny random models (fast tier) and the real embedded model (integration tier).

Every test runs with LMOPT_HOME in a per-session temp dir, except that the embedded model's
converted safetensors are shared through LMOPT_TEST_CACHE (default ~/.cache/lmopt) so CI converts
the GGUF once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("LMOPT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default test run never downloads
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def lmopt_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Isolate the registry and step cache; keep converted models in a shared cache."""
    home = tmp_path_factory.mktemp("lmopt_home")
    shared = Path(os.environ.get("LMOPT_TEST_CACHE", Path.home() / ".cache" / "lmopt")) / "models"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(shared, target_is_directory=True)
    os.environ["LMOPT_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny():
    """A tiny random llama (2 layers, hidden 64, GQA 4/2 heads) with a real BPE tokenizer."""
    from lmopt.models import tiny_llama

    return tiny_llama()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved as an HF directory (for CLI and recipe tests)."""
    from lmopt.models import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def embedded():
    """The real embedded SmolLM2-135M-Instruct in fp32 (converted from the GGUF once)."""
    from lmopt.models import load_model

    return load_model("smollm2-135m-instruct", dtype="float32")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip("shared/data not present")
    return DATA_DIR
