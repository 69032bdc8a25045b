"""Write a llama-family model as one GGUF file with gguf's own writer (what llama.cpp's converter uses).

The file holds the hyper-parameters under llama.cpp's keys, the tokenizer and chat template
(gguf_vocab), and the tensors (gguf_tensors), so llama.cpp, llama-cpp-python and Ollama load it as
any other GGUF. It is written under a temporary name beside the target and renamed when complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError
from lmopt.export.gguf_tensors import GGUF_ARCH, plan_tensors
from lmopt.export.gguf_vocab import add_tokenizer, tokenizer_fields
from lmopt.io import atomic_path

FILE_TYPE = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
             "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1"}


def check_architecture(model: Any) -> str:
    """The llama.cpp architecture for the model, or a clear error for one this exporter cannot hold."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in GGUF_ARCH:
        raise LmoptError(f"architecture '{model_type}' cannot be exported to GGUF yet "
                         f"(supported: {', '.join(sorted(GGUF_ARCH))})")
    rope = _rope(model.config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise LmoptError(f"rope scaling '{rope['rope_type']}' cannot be exported to GGUF yet "
                         f"(supported: none, linear)")
    return GGUF_ARCH[model_type]


def write_gguf(model: Any, tokenizer: Any, path: Path, main: str, head: str, requantize: bool,
               name: str, pre_tokenizer: str) -> dict[str, Any]:
    """Write `path` atomically; returns what each tensor became (counts, notes) for the model card."""
    import gguf

    arch = check_architecture(model)
    fields = tokenizer_fields(tokenizer, model.config.vocab_size)  # before any file exists: bad input first
    planned, report = plan_tensors(model, main, head, requantize)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        _add_hparams(writer, model.config, name, main)
        add_tokenizer(writer, fields, pre_tokenizer)
        for item in planned:
            raw = None if item.ggml_type in ("f32", "f16") else gguf.GGMLQuantizationType[item.ggml_type.upper()]
            writer.add_tensor(item.name, item.data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"tensor_types": dict(sorted(report.counts.items())), "notes": report.notes,
            "architecture": arch, "pre_tokenizer": pre_tokenizer}


def _rope(config: Any) -> dict[str, Any]:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return {**rope, "rope_theta": theta}


def _add_hparams(writer: Any, config: Any, name: str, main: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_file_type(int(gguf.LlamaFileType[FILE_TYPE[main]]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
