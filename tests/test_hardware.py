"""Hardware detection and the decode roofline (weight bytes counted by brute force)."""

import torch

from lmopt.hardware import decode_roofline, detect_hardware, weight_bytes_per_token
from lmopt.models import tiny_llama


def test_dtype_follows_the_cpu_flags():
    hw = detect_hardware()
    if hw.device == "cpu":
        native_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(hw.isa))
        assert hw.dtype == ("bfloat16" if native_bf16 else "float32")
    assert hw.threads >= 1 and hw.memory_gb > 0


def test_weight_bytes_count_the_tied_head_once_and_skip_an_untied_embedding():
    for tied in (True, False):
        model = tiny_llama(tie_word_embeddings=tied).model
        embed = model.get_input_embeddings().weight
        expected = sum(p.numel() * p.element_size() for p in model.parameters()
                       if tied or p is not embed)
        expected += sum(b.numel() * b.element_size() for b in model.buffers()
                        if b.dim() > 0 and b.numel() > 1)
        assert weight_bytes_per_token(model) == expected
    bf16 = tiny_llama().model.to(torch.bfloat16)
    assert decode_roofline(bf16, 10.0) > decode_roofline(tiny_llama().model, 10.0)
