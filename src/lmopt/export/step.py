"""The `export` step: write the current model as GGUF, ONNX or vLLM safetensors, with its parity check.

```yaml
steps:
  - quantize: {method: gptq, bits: 4, group_size: 32}
  - export: {format: gguf, type: q4_1}            # code for code: the GPTQ rounding survives
  - export: {format: vllm}                        # compressed-tensors W4A16
```
Without `output` the export goes inside the step's own directory (`model.gguf`, or the directory
itself for onnx/vllm). The next step sees the GGUF file or the vLLM directory as the current model
(both load back through transformers); an ONNX export leaves the current model unchanged.
"""

from __future__ import annotations

from lmopt.export.api import export
from lmopt.export.config import ExportConfig
from lmopt.models import load_model
from lmopt.step import Step, StepContext, StepResult


def export_step(ctx: StepContext, config: ExportConfig) -> StepResult:
    """Export the current model for a runtime (gguf, onnx, vllm) and check it against the source."""
    if config.output is None:
        target = ctx.output / "model.gguf" if config.format == "gguf" else ctx.output
    else:
        target = ctx.resolve_path(config.output)
    loaded = load_model(ctx.require_model(), dtype="float32")
    result = export(loaded, config.model_copy(update={"output": str(target)}), base_dir=ctx.base_dir)
    model = None if config.format == "onnx" else result.path
    return StepResult(model=model, metrics=result.metrics(), model_hash=loaded.hash)


EXPORT = Step("export", ExportConfig, export_step)
