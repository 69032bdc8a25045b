"""Students cut from a teacher, vocabulary checks, and distillation runs on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch

from lmopt.errors import LmoptError
from lmopt.models import LoadedModel, tiny_llama
from lmopt.train import DistillConfig, distill, student_from_teacher
from lmopt.train.students import block_influence, keep_layers, uniform_layers


@pytest.fixture(scope="module")
def teacher():
    """A random 4-layer teacher with a sharpened head, so its distributions are far from uniform."""
    loaded = tiny_llama(num_layers=4, seed=1, tie_word_embeddings=False)
    with torch.no_grad():
        loaded.model.lm_head.weight.mul_(5.0)
    return loaded


def _docs():
    from lmopt.data.text import pydoc_text

    return [d for d in pydoc_text("train")[:12_000].split("\n\n") if d.strip()]


def test_uniform_layers_keep_first_and_last():
    assert uniform_layers(30, 15) == [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29]
    assert uniform_layers(4, 2) == [0, 3] and uniform_layers(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(LmoptError, match="student_layers"):
        uniform_layers(4, 5)


def test_cut_student_runs_the_kept_layers(teacher):
    """The student's forward equals running the teacher's kept layers in order (checked by hooks)."""
    student = keep_layers(teacher.model, [0, 2])
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    assert len(teacher.model.model.layers) == 4  # the teacher is untouched
    ids = torch.randint(0, 400, (1, 10))
    with torch.no_grad():
        full = keep_layers(teacher.model, [0, 1, 2, 3])(input_ids=ids).logits
        torch.testing.assert_close(full, teacher.model(input_ids=ids).logits)
        out = student.generate(input_ids=ids, max_new_tokens=3, do_sample=False)  # KV cache indices work
    assert out.shape == (1, 13)


def test_block_influence_matches_cosine_definition(teacher):
    ids = torch.randint(0, 400, (2, 12))
    scores = block_influence(teacher.model, [ids])
    with torch.no_grad():
        hidden = teacher.model(input_ids=ids, output_hidden_states=True).hidden_states
    cos = torch.nn.functional.cosine_similarity(hidden[1], hidden[2], dim=-1)
    assert scores[1] == pytest.approx((1 - cos).mean().item(), rel=1e-5)
    student = student_from_teacher(teacher, 2, "block_influence", [ids])
    kept = student.model.config.lmopt_teacher_layers
    assert kept == sorted(sorted(range(4), key=lambda i: -scores[i])[:2])


def test_vocabulary_mismatch_is_a_clear_error(teacher):
    other = tiny_llama(vocab_size=384)
    with pytest.raises(LmoptError, match="tokenizers differ"):
        distill(teacher, other, _docs(), DistillConfig(max_steps=1))


@pytest.mark.parametrize("loss", ["forward_kl", "jsd"])
def test_distillation_pulls_student_towards_teacher(teacher, loss):
    """Pure distillation (alpha 0) lowers the divergence to the teacher on held-out text. (The loop is
    the same for every divergence; reverse KL's formula is checked against brute force in test_losses.)"""
    from lmopt.train.finetune import collate_batch, prepare_data
    from lmopt.train.losses import kd_loss

    student = student_from_teacher(teacher, 2)
    config = DistillConfig(
        loss=loss, alpha=0.0, temperature=1.0, seq_len=48, max_steps=15, lr=2e-3, load_best=False
    )
    val = prepare_data(_docs(), teacher.tokenizer, config).val
    batch = collate_batch(list(enumerate(val)), teacher.tokenizer.pad_token_id)

    def gap(model):
        with torch.no_grad():
            s = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            t = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return kd_loss(s, t, batch["labels"], loss).item()

    before = gap(student.model)
    result = distill(teacher, student, _docs(), config)
    assert gap(result.model.model) < before * 0.9
    assert result.model.card.step == "distill" and result.metrics["loss"] == loss


def test_hidden_matching_with_projection_and_topk_cache(tmp_path, teacher):
    narrow = tiny_llama(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, seed=3)
    n_student = sum(p.numel() for p in narrow.model.parameters())
    result = distill(teacher, narrow, _docs(), DistillConfig(hidden_weight=1.0, seq_len=48, max_steps=3))
    assert not hasattr(result.model.model, "lmopt_distill_projection")
    # the student plus one Linear(32 -> 64, no bias) per student layer, which trains but does not ship
    assert result.metrics["trainable_parameters"] == n_student + 2 * 32 * 64
    student = student_from_teacher(teacher, 2)
    config = DistillConfig(teacher_topk=8, seq_len=48, max_steps=4, epochs=2)
    distill(teacher, student, _docs(), config, run_dir=tmp_path)
    cache = tmp_path / "teacher_top8.safetensors"
    assert cache.exists()
    from safetensors.torch import load_file

    stored = load_file(str(cache))
    assert stored["values"].shape[-1] == 8 and stored["indices"].dtype == torch.int32
    with pytest.raises(LmoptError, match="teacher_topk"):
        distill(teacher, student, _docs(), DistillConfig(teacher_topk=8, hidden_weight=1.0))


def test_distill_lora_student(teacher):
    student = LoadedModel(copy.deepcopy(teacher.model), teacher.tokenizer, "copy")
    result = distill(teacher, student, _docs(), DistillConfig(method="lora", seq_len=48, max_steps=2))
    assert not hasattr(result.model.model, "peft_config")
    # Merged adapters moved exactly the LoRA-targeted projections; everything else is the teacher's.
    targets = tuple(f"{t}.weight" for t in DistillConfig(method="lora").lora_targets)
    teacher_state = teacher.model.state_dict()
    for name, tensor in result.model.model.state_dict().items():
        assert torch.equal(tensor, teacher_state[name]) != name.endswith(targets), name
