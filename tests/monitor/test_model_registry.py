"""Model registry: registration with card lineage, aliases with history, promote/rollback, @alias loading, diff."""

from __future__ import annotations

import pytest

from lmopt.errors import LmoptError
from lmopt.models import ModelCard, content_hash, load_model, save_model, save_tiny_llama
from lmopt.models.load import REFERENCE_RESOLVERS
from lmopt.monitor import (
    Registry,
    alias_history,
    aliases,
    diff_models,
    enable_alias_references,
    get_model,
    lineage,
    list_models,
    promote,
    register_model,
    resolve_alias,
    rollback,
)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A base model and a child made from it by a (pretend) quantize step, with card lineage."""
    import torch

    root = tmp_path_factory.mktemp("family")
    base = save_tiny_llama(root / "base")
    loaded = load_model(base, dtype="float32")
    with torch.no_grad():
        loaded.model.model.norm.weight.mul_(1.5)
    card = ModelCard(name="base-rtn-w4", parent=str(base), parent_hash=content_hash(base), step="quantize",
                     config={"method": "rtn", "bits": 4}, metrics={"ppl": 12.5}, data_hash="d1")
    child = save_model(loaded.model, loaded.tokenizer, root / "child", card)
    return base, child


@pytest.fixture
def reg(tmp_path):
    return Registry(f"sqlite:///{tmp_path / 'registry.db'}")


def test_register_reads_lineage_from_card_and_registers_parent(family, reg):
    base, child = family
    record = register_model(child, reg, figures={"acc": 0.5})
    assert record.hash == content_hash(child)
    assert record.parent_hash == content_hash(base) and record.step == "quantize"
    assert record.lineage["config"] == {"method": "rtn", "bits": 4}
    assert record.lineage["data"] == {"data_hash": "d1"}
    assert record.figures == {"ppl": 12.5, "acc": 0.5}
    assert {m.hash for m in list_models(reg)} == {content_hash(base), content_hash(child)}
    assert [r.hash for r in lineage(child, reg)] == [content_hash(child), content_hash(base)]
    # Registering again keeps one row and merges figures.
    register_model(child, reg, figures={"acc": 0.6})
    assert len(list_models(reg)) == 2 and get_model(child, reg).figures == {"ppl": 12.5, "acc": 0.6}


def test_promote_rollback_history(family, reg, monkeypatch):
    base, child = family
    hb, hc = content_hash(base), content_hash(child)
    monkeypatch.setenv("LMOPT_USER", "alice")
    promote(base, "production", reg)
    promote(child, "@production", reg, reason="smaller")
    monkeypatch.setenv("LMOPT_USER", "bob")
    promote(child, "candidate", reg)
    assert aliases(reg) == {"candidate": hc, "production": hc}
    assert get_model(hc[:8], reg).aliases == ["candidate", "production"]

    event = rollback("production", reg, reason="latency")
    assert (event.action, event.model_hash, event.previous_hash, event.user) == ("rollback", hb, hc, "bob")
    assert aliases(reg)["production"] == hb
    with pytest.raises(LmoptError, match="no earlier target"):
        rollback("production", reg)
    history = alias_history("production", reg)
    assert [(e.action, e.model_hash, e.previous_hash, e.user) for e in history] == [
        ("promote", hb, None, "alice"), ("promote", hc, hb, "alice"), ("rollback", hb, hc, "bob")]
    assert history[1].reason == "smaller" and history[0].time <= history[1].time <= history[2].time
    # Rollback undoes the latest promotion still standing: [b] + promote c + promote b, rollback -> c.
    promote(child, "production", reg)
    promote(base, "production", reg)
    rollback("production", reg)
    assert aliases(reg)["production"] == hc


def test_alias_resolution_and_loading(family, reg):
    base, child = family
    promote(child, "production", reg)
    assert resolve_alias("@production", reg.url) == str(child.resolve())
    assert resolve_alias(str(base), reg.url) == str(base)  # not an alias: unchanged
    with pytest.raises(LmoptError, match=r"unknown model alias '@staging' \(known: @production"):
        resolve_alias("@staging", reg.url)
    saved = dict(REFERENCE_RESOLVERS)
    try:
        enable_alias_references(reg.url)
        loaded = load_model("@production", dtype="float32")
        assert loaded.hash == content_hash(child) and loaded.ref == "@production"
        REFERENCE_RESOLVERS.clear()
        with pytest.raises(LmoptError, match="need the model registry"):
            load_model("@production")
    finally:
        REFERENCE_RESOLVERS.clear()
        REFERENCE_RESOLVERS.update(saved)


def test_alias_refuses_a_directory_changed_after_promotion(tmp_path, reg):
    model = save_tiny_llama(tmp_path / "m")
    promote(model, "production", reg)
    save_tiny_llama(tmp_path / "m", seed=1)  # overwritten in place
    with pytest.raises(LmoptError, match="changed after promotion"):
        resolve_alias("@production", reg.url)


def test_bad_names_and_unknown_models(tmp_path, reg, family):
    with pytest.raises(LmoptError, match="not a valid alias"):
        promote(family[0], "prod uction", reg)
    with pytest.raises(LmoptError, match="not a valid alias"):
        promote(family[0], "abcdef12", reg)  # would read as a hash
    with pytest.raises(LmoptError, match="not registered"):
        get_model(family[0], reg)
    with pytest.raises(LmoptError, match="nothing to roll back"):
        rollback("candidate", reg)
    with pytest.raises(LmoptError, match="no such model directory"):
        promote(str(tmp_path / "missing"), "production", reg)


def test_diff_names_the_step_config_data_and_figures(family, reg):
    base, child = family
    register_model(base, reg, figures={"ppl": 12.0, "acc": 0.5})
    diff = diff_models(base, child, reg)
    assert diff.common_ancestor == content_hash(base)
    assert diff.a_steps == [] and [s["step"] for s in diff.b_steps] == ["quantize"]
    assert diff.config == {"bits": [None, 4], "method": [None, "rtn"]}
    assert diff.data == {"data_hash": [None, "d1"]}
    assert diff.fields["step"] == [None, "quantize"]
    assert diff.figures["ppl"] == {"a": 12.0, "b": 12.5, "delta": 0.5}
    assert diff.figures["acc"]["delta"] is None  # only one side has it


def test_parent_named_by_the_embedded_model_is_registered(family, reg, monkeypatch, tmp_path):
    """A model quantized from `smollm2-135m-instruct` names its parent by that name, not a path: the
    name resolves to the converted directory and lineage reaches it (the float source `improve` needs)."""
    import lmopt.models.load as load

    base, _ = family
    monkeypatch.setattr(load, "embedded_gguf_path", lambda: base / "model.gguf")  # never read
    monkeypatch.setattr(load, "converted_dir", lambda *a, **k: base)
    loaded = load_model(base, dtype="float32")
    card = ModelCard(name="embedded-rtn-w8", parent=load.EMBEDDED_ALIAS, parent_hash=content_hash(base),
                     step="quantize", config={"method": "rtn", "bits": 8})
    child = save_model(loaded.model, loaded.tokenizer, tmp_path / "child", card)
    register_model(child, reg)
    assert [r.hash for r in lineage(child, reg)] == [content_hash(child), content_hash(base)]
    # A parent that no longer resolves ends the lineage instead of failing the registration.
    gone = ModelCard(name="orphan", parent=str(tmp_path / "deleted"), step="quantize")
    orphan = save_model(loaded.model, loaded.tokenizer, tmp_path / "orphan", gone)
    assert [r.hash for r in lineage(register_model(orphan, reg).hash, reg)] == [content_hash(orphan)]
