"""Layer-by-layer sequential calibration, shared by every method that needs activations.

GPTQ, AWQ, SmoothQuant, Wanda, SparseGPT and structured pruning all need the inputs each Linear
sees on real text. Running the whole model with hooks on every layer would hold all layers'
activations at once; instead (the GPTQ / llm-compressor "sequential pipeline"):

1. `calibration_windows` (calibration_data.py) cuts calibration text into (n_samples, seq_len) token
   windows (default: the `mix` of domains);
2. `capture_layer_inputs` runs the model up to the first decoder layer and stops, keeping the
   hidden states and the other arguments that layer receives (rotary embeddings, mask...);
3. for each decoder layer in order, `process_layer(index, layer, inputs)` is called (it may run the
   layer with `collect_linear_inputs` to gather per-Linear activations, then change weights), and
   the layer is run once more so its outputs, computed with the *changed* weights, become the next
   layer's inputs. Memory stays bounded by one layer's activations.

```python
def process(i, layer, inputs):
    stats = {}
    collect_linear_inputs(layer, inputs, lambda name, mod, x: stats.setdefault(name, []).append(x))
    ...                                                    # change layer's weights from the stats
sequential_calibrate(model, calibration_windows(tok, "mix", 32, 512), process)
```
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch

from lmopt.compress.calibration_data import calibration_windows
from lmopt.compress.config import CalibrationConfig
from lmopt.errors import LmoptError
from lmopt.progress import progress_bar

__all__ = ["CalibrationConfig", "LayerInputs", "calibrate", "calibration_windows", "capture_layer_inputs",
           "collect_linear_inputs", "decoder_layers", "linear_input_hooks", "linear_modules", "run_layer",
           "sequential_calibrate"]


@dataclass
class LayerInputs:
    """What one decoder layer receives, batch by batch.

    `hidden[b]` is a (batch, seq, hidden) tensor; `kwargs[b]` holds the other arguments the model
    passed to its layers for that batch (position_embeddings, attention_mask, position_ids...).
    """

    hidden: list[Any]
    kwargs: list[dict[str, Any]]

    @property
    def n_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    def with_hidden(self, hidden: list[Any]) -> LayerInputs:
        return LayerInputs(hidden, self.kwargs)


def decoder_layers(model: Any) -> Any:
    """The ModuleList of decoder layers of a causal LM (llama/mistral/qwen/gpt2/opt/falcon layouts)."""
    base = getattr(model, "model", None) or getattr(model, "transformer", None) or model
    for path in ("layers", "h", "decoder.layers", "blocks"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    raise LmoptError(f"{type(model).__name__}: cannot find the decoder layers (expected model.layers or .h)")


def linear_modules(module: Any, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The nn.Linear submodules of `module` by qualified name, in definition order."""
    return {name: mod for name, mod in module.named_modules()
            if isinstance(mod, torch.nn.Linear) and not any(s in name for s in skip)}


class _StopForward(Exception):
    """Raised by the capture hook to end the forward pass after the first layer's inputs."""


def capture_layer_inputs(model: Any, windows: Any, batch_size: int = 8) -> LayerInputs:
    """Run `model` on `windows` up to its first decoder layer; return that layer's inputs."""
    first = decoder_layers(model)[0]
    hidden, kwargs = [], []

    def hook(_module: Any, args: tuple, kw: dict) -> None:
        hidden.append(args[0] if args else kw.pop("hidden_states"))
        kwargs.append({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _StopForward

    device = next(model.parameters()).device
    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                with suppress(_StopForward):
                    model(input_ids=windows[start:start + batch_size].to(device), use_cache=False)
    finally:
        handle.remove()
    return LayerInputs(hidden, kwargs)


def run_layer(layer: Any, inputs: LayerInputs) -> list[Any]:
    """The layer's output hidden states for every batch of `inputs`."""
    outputs = []
    with torch.no_grad():
        for hidden, kw in zip(inputs.hidden, inputs.kwargs, strict=True):
            out = layer(hidden, **kw)
            outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


@contextmanager
def linear_input_hooks(layer: Any, on_input: Callable[[str, Any, Any], None],
                       names: Sequence[str] | None = None) -> Iterator[None]:
    """While active, call `on_input(name, linear, x)` with each Linear's input x (..., in_features)."""
    def hook(name: str) -> Callable[[Any, tuple], None]:
        def call(module: Any, args: tuple) -> None:  # returns None: the Linear's input is unchanged
            on_input(name, module, args[0])
        return call

    handles = [mod.register_forward_pre_hook(hook(name))
               for name, mod in linear_modules(layer).items() if names is None or name in names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def collect_linear_inputs(layer: Any, inputs: LayerInputs, on_input: Callable[[str, Any, Any], None],
                          names: Sequence[str] | None = None) -> list[Any]:
    """Run `layer` on `inputs` with `linear_input_hooks`; return its outputs (one per batch)."""
    with linear_input_hooks(layer, on_input, names):
        return run_layer(layer, inputs)


def sequential_calibrate(model: Any, windows: Any, process_layer: Callable[[int, Any, LayerInputs], Any],
                         batch_size: int = 8, description: str = "calibrating") -> LayerInputs:
    """Call `process_layer(i, layer, inputs)` for each decoder layer in order (see module docstring).

    After the callback, the layer is run again and its outputs become the next layer's inputs, so
    each layer is calibrated on what the already-processed layers before it really produce.
    Returns the last layer's outputs (before the final norm), for methods that go on to the lm_head.
    """
    layers = decoder_layers(model)
    was_training = model.training
    model.eval()
    inputs = capture_layer_inputs(model, windows, batch_size)
    with progress_bar(description, len(layers)) as advance:
        for index, layer in enumerate(layers):
            process_layer(index, layer, inputs)
            inputs = inputs.with_hidden(run_layer(layer, inputs))
            advance(1)
    model.train(was_training)
    return inputs


def calibrate(model: Any, tokenizer: Any, config: CalibrationConfig,
              process_layer: Callable[[int, Any, LayerInputs], Any],
              description: str = "calibrating") -> LayerInputs:
    """`sequential_calibrate` on windows drawn as `config` says."""
    windows = calibration_windows(tokenizer, config.source, config.n_samples, config.seq_len, config.seed,
                                  config.data_dir)
    return sequential_calibrate(model, windows, process_layer, config.batch_size, description)
