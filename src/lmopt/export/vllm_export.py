"""HF safetensors that vLLM loads as they are; lmopt's quantized layers in compressed-tensors'
`pack-quantized` layout (what vLLM's W4A16/W8A16 `CompressedTensorsWNA16` scheme reads).

Per quantized Linear `name` (weight (N, K), `b` bits, groups of `g` columns; layout from
compressed_tensors.compressors.pack_quantized, checked against its own packer in the tests):
- `name.weight_packed` int32 (N, K*b/32): the codes as signed ints q - 2^(b-1), stored offset by
  +2^(b-1) (so, lmopt's unsigned codes q themselves), 32/b per word, element i at bit i*b;
- `name.weight_scale` (N, K/g) in the model dtype; `name.weight_shape` int64 [N, K];
- asymmetric grids only: `name.weight_zero_point` int32 (N*b/32, K/g): the zero points z - 2^(b-1),
  packed the same way but along the output dimension.
De-quantized weight = (q_signed - zp_signed) * scale = (q - z) * s: lmopt's own, code for code.
vLLM's kernels take one group size per scheme, dividing every layer's width: a layer grouped by 128
with a short last group (576 = 4 x 128 + 64) is written with groups of gcd(128, 576) = 64, each
scale repeated, which is the same grid. The lm_head stays unquantized (listed in `ignore`, as
llm-compressor does): a default lmopt lm_head is 8-bit asymmetric, which vLLM's kernels do not run.
Scales are fp16 in lmopt, so a quantized model is written in float16 (`auto`) to keep them exact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from lmopt.compress.quantize.runtime import QuantLinear
from lmopt.errors import LmoptError
from lmopt.export.config import ExportConfig
from lmopt.export.gguf_tensors import is_tied
from lmopt.export.parity import compare, judge, parity_windows, torch_logits
from lmopt.io import atomic_directory
from lmopt.models import LoadedModel

MARLIN_GROUPS = (-1, 32, 64, 128)
"""Group sizes vLLM's Marlin W4A16/W8A16 kernels run (-1 = per channel)."""


def pack_int32(values: torch.Tensor, bits: int) -> torch.Tensor:
    """(R, C) unsigned codes < 2^bits -> (R, C*bits/32) int32, element i at bit i*bits of the row."""
    per_word = 32 // bits
    rows, cols = values.shape
    if cols % per_word:
        raise ValueError(f"{cols} values do not fill whole int32 words of {per_word}")
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    words = (values.to(torch.int64).view(rows, -1, per_word) << shifts).sum(-1)  # (R, C/per_word) < 2^32
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def unpack_int32(words: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of `pack_int32`: (R, W) int32 -> (R, cols) unsigned codes (int64)."""
    shifts = torch.arange(32 // bits, dtype=torch.int64) * bits
    values = (words.to(torch.int64).unsqueeze(-1) >> shifts) & (2 ** bits - 1)
    return values.reshape(words.shape[0], -1)[:, :cols]


def scheme(layers: dict[str, QuantLinear]) -> dict[str, Any]:
    """The one weight scheme all quantized layers share (bits, symmetric, group), or a clear error."""
    bits = {m.bits for m in layers.values()}
    if len(bits) > 1 or next(iter(bits)) not in (4, 8):
        raise LmoptError(f"vllm: quantized layers must all be 4-bit or all 8-bit for W4A16/W8A16 "
                         f"(found {sorted(bits)} bits)")
    (b,) = bits
    symmetric = all(bool((m.zeros == 2 ** (b - 1)).all()) for m in layers.values())
    if b == 8 and not symmetric:
        raise LmoptError("vllm: 8-bit weights must be symmetric (sym: true) for vLLM's W8A16 kernels; "
                         "asymmetric 8-bit loads but does not run there")
    if all(m.group_size >= m.in_features for m in layers.values()):
        return {"bits": b, "symmetric": symmetric, "group_size": None, "strategy": "channel"}
    group = 0
    for m in layers.values():
        group = math.gcd(group, math.gcd(m.group_size, m.in_features))
    if group not in MARLIN_GROUPS:
        raise LmoptError(f"vllm: group size {group} (common to every layer's width) is not one vLLM's "
                         f"kernels run ({', '.join(str(g) for g in MARLIN_GROUPS[1:])}); quantize with "
                         f"group_size 32, 64 or 128")
    return {"bits": b, "symmetric": symmetric, "group_size": group, "strategy": "group"}


def compressed_layer(layer: QuantLinear, spec: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one layer (names relative to the module)."""
    b, n, k = spec["bits"], layer.out_features, layer.in_features
    group = spec["group_size"] or k
    columns = torch.arange(0, k, group) // layer.group_size  # export group -> lmopt group
    tensors = {"weight_packed": pack_int32(layer.codes().cpu(), b),
               "weight_scale": layer.scales.cpu()[:, columns].to(dtype).contiguous(),
               "weight_shape": torch.tensor([n, k], dtype=torch.int64)}
    if not spec["symmetric"]:
        zeros = layer.zeros.cpu()[:, columns]  # (N, G)
        tensors["weight_zero_point"] = pack_int32(zeros.t().contiguous(), b).t().contiguous()
    if layer.bias is not None:
        tensors["bias"] = layer.bias.detach().cpu().to(dtype)
    return tensors


def quantization_config(spec: dict[str, Any], ignore: list[str]) -> dict[str, Any]:
    weights = {"num_bits": spec["bits"], "type": "int", "symmetric": spec["symmetric"],
               "group_size": spec["group_size"], "strategy": spec["strategy"], "dynamic": False,
               "actorder": None, "observer": "minmax"}
    group = {"targets": ["Linear"], "weights": weights, "input_activations": None,
             "output_activations": None, "format": "pack-quantized"}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": group}, "ignore": ignore, "kv_cache_scheme": None}


def write_vllm(loaded: LoadedModel, path: Path, dtype: torch.dtype) -> dict[str, Any]:
    """Write the directory atomically; returns the scheme and notes for the card."""
    from safetensors.torch import save_file

    model = loaded.model
    head = model.get_output_embeddings()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear) and m is not head}
    spec = scheme(layers) if layers else None
    notes = [f"{n}: int8 activations not carried over (W8A16)" for n, m in layers.items() if m.act_quant]
    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if name in layers:
            tensors.update({f"{name}.{k}": v for k, v in compressed_layer(module, spec, dtype).items()})
        elif isinstance(module, QuantLinear):  # the lm_head: kept as a float weight
            tensors[f"{name}.weight"] = module.dequantize(dtype).cpu()
        else:
            for key, param in module.named_parameters(recurse=False):
                tensors[f"{name}.{key}"] = param.detach().cpu().to(dtype).contiguous()
    tied = is_tied(model)
    if tied:
        tensors.pop("lm_head.weight", None)
    config = model.config.to_dict()
    config.update({"torch_dtype": str(dtype).removeprefix("torch."), "dtype": str(dtype).removeprefix("torch."),
                   "tie_word_embeddings": tied})
    if spec is not None:
        ignore = ["lm_head"] + [n for n, m in model.named_modules()
                                if isinstance(m, torch.nn.Linear) and n != "lm_head"]
        config["quantization_config"] = quantization_config(spec, ignore)

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        loaded.tokenizer.save_pretrained(tmp)

    atomic_directory(path, write)
    return {"scheme": spec, "notes": notes, "dtype": str(dtype).removeprefix("torch."), "tied": tied}


def export_dtype(model: Any, config: ExportConfig) -> torch.dtype:
    if config.type == "auto":
        quantized = any(isinstance(m, QuantLinear) for m in model.modules())
        return torch.float16 if quantized else torch.bfloat16
    return {"f16": torch.float16, "bf16": torch.bfloat16}[config.type]


# --- reading it back ---------------------------------------------------------------------------------


def load_vllm(path: Path) -> tuple[Any, str]:
    """The exported directory as a float32 transformers model, and which reader built it.

    Symmetric checkpoints load through transformers' compressed-tensors integration. Asymmetric ones
    are de-compressed module by module with compressed-tensors' own `PackedQuantizationCompressor`:
    this transformers/compressed-tensors pair sizes the zero point unpacked (N, G) when it lays out
    the model, so it rejects the packed (N*b/32, G) zero points that compressed-tensors itself writes.
    Without compressed-tensors installed, lmopt's unpacker (tested against compressed-tensors') is used.
    """
    from transformers import AutoModelForCausalLM

    config = json.loads((path / "config.json").read_text())
    quant = config.get("quantization_config")
    if quant is None:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), "transformers"
    weights = quant["config_groups"]["group_0"]["weights"]
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        return _load_decompressed(path, config, weights, _own_decompress), "lmopt unpacker"
    if weights["symmetric"]:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return model, "transformers compressed-tensors loader"
    return _load_decompressed(path, config, weights, _ct_decompress), "compressed-tensors decompressor"


def _load_decompressed(path: Path, config: dict[str, Any], weights: dict[str, Any], decompress: Any) -> Any:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    plain = {k: v for k, v in config.items() if k != "quantization_config"}
    hf_config = AutoConfig.for_model(**plain)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    tensors = load_file(str(path / "model.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for module in {k.rsplit(".", 1)[0] for k in tensors if k.endswith(".weight_packed")}:
        local = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.rsplit(".", 1)[0] == module}
        state[f"{module}.weight"] = decompress(local, weights)
        if "bias" in local:
            state[f"{module}.bias"] = local["bias"]
    state.update({k: v for k, v in tensors.items() if k.rsplit(".", 1)[0] not in
                  {s.rsplit(".", 1)[0] for s in state}})
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if hf_config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def _ct_decompress(local: dict[str, torch.Tensor], weights: dict[str, Any]) -> torch.Tensor:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**{
        k: v for k, v in weights.items() if k in ("num_bits", "type", "symmetric", "group_size", "strategy")}))
    return PackedQuantizationCompressor.decompress(dict(local), scheme)["weight"].float()


def _own_decompress(local: dict[str, torch.Tensor], weights: dict[str, Any]) -> torch.Tensor:
    bits = weights["num_bits"]
    n, k = (int(x) for x in local["weight_shape"])
    scale = local["weight_scale"].float()
    group = k // scale.shape[1]
    q = unpack_int32(local["weight_packed"], bits, k).float()
    zero = torch.full_like(scale, 2 ** (bits - 1))
    if "weight_zero_point" in local:
        zero = unpack_int32(local["weight_zero_point"].t().contiguous(), bits, n).t().float()
    return (q - zero.repeat_interleave(group, 1)) * scale.repeat_interleave(group, 1)


def vllm_parity(path: Path, source: Any, tokenizer: Any, text: str, parity: Any, kind: str) -> dict[str, Any]:
    model, reader = load_vllm(path)
    figures = compare(torch_logits(source), torch_logits(model), parity_windows(tokenizer, text, parity))
    return judge({**figures, "reader": reader}, kind)


def export_vllm(loaded: LoadedModel, path: Path, config: ExportConfig, name: str,
                text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `export` writer for format vllm: (details for the card, parity figures)."""
    dtype = export_dtype(loaded.model, config)
    details = write_vllm(loaded, path, dtype)
    details["type"] = details["dtype"]
    details["layout"] = "compressed-tensors pack-quantized" if details["scheme"] else "plain HF safetensors"
    if not config.parity.enabled:
        return details, {}
    kind = "exact" if details["scheme"] else {"float16": "f16", "bfloat16": "bf16"}[details["dtype"]]
    return details, vllm_parity(path, loaded.model, loaded.tokenizer, text, config.parity, kind)
