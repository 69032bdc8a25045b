"""ONNX export with a KV cache, by PyTorch's maintained exporter (`torch.onnx.export(dynamo=True)`),
and a greedy generate loop on ONNX Runtime for the parity check.

Why this exporter: optimum-onnx (0.1.x) pins transformers < 4.58 and cannot be installed beside
transformers 5; `torch.onnx.export(..., dynamo=True)` traces the model with torch.export and
translates it with onnxscript, and runs on the transformers version installed.

Graph (one graph for prefill and decode; opset 18):
- inputs `input_ids` (batch, seq) int64, `attention_mask` (batch, past + seq) int64, and per layer
  `past_key_values.{i}.key` / `.value` (batch, kv_heads, past, head_dim) float32 (past may be 0);
- outputs `logits` (batch, seq, vocab) and `present.{i}.key` / `.value` (batch, kv_heads, past + seq,
  head_dim): feed them back as the next step's past.
The KV tensors cross the graph boundary as plain tensors: the wrapper below fills a transformers
`DynamicCache` from them, so the model's own attention code is what gets exported. A model lmopt
quantized is exported de-quantized (float32): ONNX Runtime cannot run lmopt's packed kernels.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmopt.compress.quantize.apply import quant_layers
from lmopt.compress.quantize.storage import dequantized_copy
from lmopt.errors import LmoptError, missing_dependency
from lmopt.export.config import ExportConfig
from lmopt.export.parity import PROMPTS, compare, judge, parity_windows, torch_logits
from lmopt.io import atomic_directory
from lmopt.models import LoadedModel

OPSET = 18
GRAPH = "model.onnx"


class KVWrapper(torch.nn.Module):
    """forward(input_ids, attention_mask, *past) -> (logits, *present) with flat KV tensors."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model, self.layers = model, model.config.num_hidden_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor) -> tuple:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True)
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def io_names(layers: int) -> tuple[list[str], list[str]]:
    kv = [(i, name) for i in range(layers) for name in ("key", "value")]
    return (["input_ids", "attention_mask"] + [f"past_key_values.{i}.{n}" for i, n in kv],
            ["logits"] + [f"present.{i}.{n}" for i, n in kv])


def kv_shape(config: Any) -> tuple[int, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_key_value_heads, head_dim


def float_model(loaded: LoadedModel) -> tuple[Any, list[str]]:
    """A float32 copy to export (de-quantized when lmopt quantized it)."""
    model, notes = loaded.model, []
    if quant_layers(model):
        model = dequantized_copy(copy.deepcopy(model))
        notes.append("weights de-quantized to float32: ONNX Runtime does not run lmopt's packed kernels")
    if getattr(model.config, "model_type", None) not in ("llama", "mistral", "qwen2", "qwen3", "gemma3_text"):
        notes.append(f"architecture {model.config.model_type} has not been tested with this exporter")
    return model.float().eval(), notes


def write_onnx(loaded: LoadedModel, path: Path) -> dict[str, Any]:
    """Export the graph into a directory (atomically) with the tokenizer and config beside it."""
    model, notes = float_model(loaded)
    layers = model.config.num_hidden_layers
    heads, head_dim = kv_shape(model.config)
    names_in, names_out = io_names(layers)
    batch, seq = torch.export.Dim("batch", max=256), torch.export.Dim("seq", max=65536)
    total, past = torch.export.Dim("total", max=131072), torch.export.Dim("past", max=65536)
    sample = (torch.ones(1, 4, dtype=torch.long), torch.ones(1, 6, dtype=torch.long),
              *[torch.zeros(1, heads, 2, head_dim) for _ in range(2 * layers)])
    shapes = ({0: batch, 1: seq}, {0: batch, 1: total}, tuple({0: batch, 2: past} for _ in range(2 * layers)))
    try:
        program = torch.onnx.export(KVWrapper(model), sample, dynamo=True, dynamic_shapes=shapes,
                                    input_names=names_in, output_names=names_out, opset_version=OPSET,
                                    verbose=False)
    except Exception as exc:  # the exporter's own message says what in the model it could not trace
        raise LmoptError(f"onnx: torch.onnx.export could not export {model.config.model_type}: "
                         f"{str(exc).splitlines()[0]}") from None
    info = {"exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}", "opset": OPSET,
            "inputs": names_in[:2] + ["past_key_values.{i}.key|value"],
            "outputs": ["logits", "present.{i}.key|value"], "kv_heads": heads, "head_dim": head_dim,
            "layers": layers, "dtype": "float32", "notes": notes}

    def write(tmp: Path) -> None:
        program.save(str(tmp / GRAPH))
        model.config.to_json_file(str(tmp / "config.json"))
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / "onnx_io.json").write_text(json.dumps(info, indent=2))

    atomic_directory(path, write)
    return info


class OrtModel:
    """The exported graph on ONNX Runtime's CPU provider: logits and a greedy generate loop."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        """`threads`: ONNX Runtime's intra-op threads (None: its default, every core)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_dependency("onnxruntime", "export") from None
        info = json.loads((path / "onnx_io.json").read_text())
        self.layers, self.heads, self.head_dim = info["layers"], info["kv_heads"], info["head_dim"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path / GRAPH), options, providers=["CPUExecutionProvider"])
        self.names_in, _ = io_names(self.layers)

    def empty_past(self, batch: int = 1) -> list[np.ndarray]:
        return [np.zeros((batch, self.heads, 0, self.head_dim), np.float32) for _ in range(2 * self.layers)]

    def step(self, ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        total = past[0].shape[2] + ids.shape[1]
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((ids.shape[0], total), np.int64)}
        feeds.update(dict(zip(self.names_in[2:], past, strict=True)))
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.step(ids.numpy(), self.empty_past(ids.shape[0]))[0])

    def generate(self, ids: list[int], new_tokens: int, eos: int | None) -> list[int]:
        """Greedy decoding with the KV cache: prefill once, then one token per step."""
        logits, past = self.step(np.array([ids]), self.empty_past())
        out: list[int] = []
        for _ in range(new_tokens):
            token = int(logits[0, -1].argmax())
            out.append(token)
            if token == eos:
                break
            logits, past = self.step(np.array([[token]]), past)
        return out


def hf_generate(model: Any, ids: list[int], new_tokens: int, eos: int | None) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)
    return out[0, len(ids):].tolist()


def onnx_parity(path: Path, source: Any, tokenizer: Any, text: str, parity: Any) -> dict[str, Any]:
    ort_model = OrtModel(path)
    figures = compare(torch_logits(source), ort_model.logits, parity_windows(tokenizer, text, parity))
    same = 0
    prompts = PROMPTS[: parity.prompts]
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        eos = tokenizer.eos_token_id
        same += ort_model.generate(ids, parity.new_tokens, eos) == hf_generate(source, ids, parity.new_tokens, eos)
    figures.update({"greedy_prompts": len(prompts), "greedy_same": same,
                    "reader": "onnxruntime CPUExecutionProvider (greedy loop with KV cache)"})
    return judge(figures, "f32")


def export_onnx(loaded: LoadedModel, path: Path, config: ExportConfig, name: str,
                text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `export` writer for format onnx: (details for the card, parity figures)."""
    try:
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError:
        raise missing_dependency("onnxscript", "export") from None
    details = {**write_onnx(loaded, path), "type": "f32"}
    if not config.parity.enabled:
        return details, {}
    return details, onnx_parity(path, loaded.model, loaded.tokenizer, text, config.parity)
