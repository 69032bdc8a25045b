"""The real embedded model (SmolLM2-135M-Instruct) converts from its GGUF with the published shape."""

import pytest

pytestmark = pytest.mark.integration


def test_embedded_model_shape(embedded):
    config = embedded.model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (576, 30, 3)
    assert sum(p.numel() for p in embedded.model.parameters()) == 134_515_008
    assert embedded.path and (embedded.path / "model.safetensors").exists()
