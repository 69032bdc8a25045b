"""The `rotate` step: fuse an orthogonal rotation into the current model and save it as a plain HF model.

```yaml
steps:
  - rotate: {seed: 0}
  - quantize: {method: gptq, bits: 4}     # the same as one `quantize: {method: rotate+gptq}`
```
The saved model loads with plain transformers (untied embedding, norm weights 1); its card records
how the rotation was built and the largest logit change measured on a fixed prompt (fp32 rounding).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lmopt.compress.quantize.config import RotateConfig
from lmopt.compress.quantize.rotate_model import rotate_llama
from lmopt.models import load_model
from lmopt.models.card import ModelCard
from lmopt.models.save import save_model
from lmopt.step import Step, StepContext, StepResult

CHECK_TOKENS = 32


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def rotate_step(ctx: StepContext, config: RotateConfig) -> StepResult:
    """Rotate the current model (loaded in fp32) and save it with its card."""
    started = time.time()
    loaded = load_model(ctx.require_model(), dtype="float32")
    model = loaded.model.eval()
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, CHECK_TOKENS), generator=torch.Generator().manual_seed(0))
    before = _logits(model, ids)
    info = rotate_llama(model, config.seed, config.construction)
    change = float((_logits(model, ids) - before).abs().max())
    metrics = {"max_logit_change": change, "logit_scale": float(before.abs().max()), **info,
               "rotate_seconds": round(time.time() - started, 2)}
    card = ModelCard(name=f"{loaded.card.name or 'model'}-rotated", parent=str(ctx.model), parent_hash=loaded.hash,
                     step="rotate", config=config.to_dict(), format_info={"rotation": info}, metrics=metrics)
    path = save_model(model, loaded.tokenizer, ctx.output, card)
    return StepResult(model=path, metrics=metrics, model_hash=loaded.hash)


ROTATE = Step("rotate", RotateConfig, rotate_step)
