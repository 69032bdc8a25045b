"""`count_parameters`: quantized layers count as the weights they stand for (reference: the float model)."""

from __future__ import annotations

from lmopt.compress.quantize import quantize
from lmopt.compress.quantize.config import RTNConfig
from lmopt.models import count_parameters, tiny_llama


def test_quantized_layers_count_their_logical_weights():
    model = tiny_llama().model
    cfg = model.config
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    before = count_parameters(model)
    assert before == sum(p.numel() for p in model.parameters())  # a float model: exactly torch's count
    quantize(model, RTNConfig(bits=4, group_size=32))
    packed = [m for m in model.modules() if "qweight" in m._buffers]
    assert packed  # the projections are stored packed now
    # a tied lm_head quantized on its own is a second (vocab x hidden) matrix; everything else is unchanged
    untied = cfg.vocab_size * cfg.hidden_size if tied and model.get_output_embeddings() in packed else 0
    assert count_parameters(model) == before + untied
    assert sum(p.numel() for p in model.parameters()) < before  # what torch alone would report
