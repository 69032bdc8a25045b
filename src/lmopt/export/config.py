"""Typed config of `export`: which runtime format, which weight type, where, and the parity check.

Kept free of torch so that reading or validating a recipe stays instant.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmopt.configs import Config

ExportFormat = Literal["gguf", "onnx", "vllm"]
WeightType = Literal["auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]

FORMAT_TYPES: dict[str, tuple[str, ...]] = {
    "gguf": ("auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"),
    "onnx": ("auto", "f32"),
    "vllm": ("auto", "f16", "bf16"),
}
"""The weight types each format takes (`auto`: see `ExportConfig.type`)."""


class ParityConfig(Config):
    """The check `export` runs on what it wrote: the file read back by an independent reader."""

    enabled: bool = True
    """Run the check (read the export back, compare with the source model)."""
    text_file: str | None = None
    """Text to measure on (.txt); None = a fixed built-in English passage (the same every run)."""
    max_tokens: int = Field(default=512, ge=16)
    """Tokens of the text used (perplexity and top-1 agreement are over these)."""
    seq_len: int = Field(default=256, ge=8)
    """Tokens per scored window."""
    prompts: int = Field(default=4, ge=0)
    """Greedy-generation prompts compared token for token (ONNX Runtime's generate loop; 0 = none)."""
    new_tokens: int = Field(default=16, ge=1)
    """Tokens generated per prompt."""
    fail: bool = False
    """Raise an error (and keep no file) when the parity goals for the type are missed."""


class ExportConfig(Config):
    """Write the model in a runtime's own format: GGUF (llama.cpp, Ollama), ONNX (ONNX Runtime) or
    HF safetensors in the compressed-tensors layout (vLLM)."""

    version: int = 1
    format: ExportFormat = "gguf"
    """gguf (llama.cpp, llama-cpp-python, Ollama), onnx (ONNX Runtime, KV cache), vllm (safetensors;
    quantized layers as compressed-tensors pack-quantized W4A16/W8A16)."""
    type: WeightType = "auto"
    """Weight type. gguf: f32, f16, bf16, q8_0, q4_0, q4_1; `auto` follows a quantized model's own grid
    (4-bit symmetric -> q4_0, 4-bit -> q4_1, 8-bit -> q8_0) and is f16 for a float model. onnx: f32.
    vllm: dtype of the unquantized tensors and scales (f16 or bf16; auto = bf16)."""
    output: str | None = None
    """Output file (gguf) or directory (onnx, vllm); None = inside the step's own output directory."""
    force: bool = False
    """Replace an existing output."""
    requantize: bool = False
    """Allow re-quantizing a model lmopt already quantized, when its grid does not fit the type
    (e.g. asymmetric 4-bit to q4_0): loses its calibrated rounding, so it must be asked for."""
    head_type: Literal["auto", "f16", "q8_0", "same"] = "auto"
    """GGUF type of the output projection (and the embedding tied to it): auto = q8_0 under the 4-bit
    types (as llama.cpp keeps the output at higher precision; the lm_head is the most sensitive
    tensor) and the main type otherwise; `same` = the main type. A quantized lm_head keeps its grid."""
    pre_tokenizer: str | None = None
    """llama.cpp pre-tokenizer name (`tokenizer.ggml.pre`, e.g. smollm, gpt-2, llama-bpe); None = read
    from the GGUF the model came from, else recognized from the tokenizer's structure."""
    name: str | None = None
    """Model name written into the export's metadata; None = the model card's name."""
    parity: ParityConfig = Field(default_factory=ParityConfig)
    """The read-back check (perplexity and top-1 agreement against the source model)."""

    @model_validator(mode="after")
    def _type_fits_format(self) -> ExportConfig:
        allowed = FORMAT_TYPES[self.format]
        if self.type not in allowed:
            raise ValueError(f"type '{self.type}' is not a {self.format} weight type (choose {', '.join(allowed)})")
        return self
