"""`select` on tiny in-process models (llama, BERT, T5): the ways, the measured table, the choice."""

from __future__ import annotations

import json
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from select_fixtures import candidate, tiny_bert, tiny_decoder, tiny_t5

from lmopt.errors import LmoptError
from lmopt.select.selection import choose, select
from lmopt.select.selection_candidates import check_tokenizer, check_way, family_of, parse_candidate
from lmopt.select.selection_config import SelectConfig
from lmopt.select.selection_data import load_task_data
from lmopt.select.selection_measure import percentile
from lmopt.select.selection_ways import Seq2seqWay, fit_logistic


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared machine two threads can wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FAST = dict(train_steps=8, latency_items=3, threads=1, batch_size=8, max_length=64)


def sentiment_rows(n: int = 48, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    filler = ["the", "a", "of", "to", "and", "in", "is", "was", "for", "on", "with", "as", "by", "at"]
    rows = []
    for _ in range(n):
        label = rng.choice(["good", "bad"])
        cue = "great fine nice" if label == "good" else "awful poor sad"
        rows.append({"text": " ".join(rng.choices(filler, k=5)) + f" {cue} " + " ".join(rng.choices(filler, k=3)),
                     "label": label})
    return rows


def test_logistic_regression_matches_scipy_on_the_same_objective():
    minimize = pytest.importorskip("scipy.optimize").minimize
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=60) > 0).astype(int) + (x[:, 2] > 1)
    k, c = 3, 0.7

    def objective(flat):  # C x sum of cross-entropies + ||W||^2 / 2 (scikit-learn's multinomial objective)
        w, b = flat[:k * 5].reshape(k, 5), flat[k * 5:]
        logits = x @ w.T + b
        logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        return c * (logz - logits[np.arange(60), y]).sum() + 0.5 * (w**2).sum()

    ref = minimize(objective, np.zeros(k * 6), method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-10}).x
    weight, bias = fit_logistic(torch.tensor(x), torch.tensor(y), k, c)
    assert np.allclose(weight.numpy(), ref[:k * 5].reshape(k, 5), atol=1e-3)
    assert np.allclose(bias.numpy(), ref[k * 5:], atol=1e-3)


def test_percentile_matches_numpy():
    values = [5.0, 1.0, 9.0, 3.0, 7.5, 2.25]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_select_measures_every_way_and_recommends_by_constraints(tmp_path):
    cands = [candidate("bert", "encoder", "probe", tiny_bert),
             candidate("bert", "encoder", "similarity", tiny_bert),
             candidate("llama", "decoder", "zero-shot", tiny_decoder),
             candidate("llama", "decoder", "lora", tiny_decoder),
             candidate("t5", "seq2seq", "zero-shot", tiny_t5)]
    config = SelectConfig(**FAST, output=str(tmp_path))
    result = select("classify", cands, sentiment_rows(), "", config)
    rows = {r["candidate"]: r for r in result.rows}
    assert list(rows) == ["bert:probe", "bert:similarity", "llama:zero-shot", "llama:lora", "t5:zero-shot"]
    for row in rows.values():
        assert 0 <= row["accuracy"] <= 1 and row["eval_items"] == 24
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"] and row["throughput_items_s"] > 0
        assert row["peak_mb"] > 0 and row["size_mb"] > 0 and row["params_m"] > 0
    assert rows["llama:zero-shot"]["adapt_s"] == 0 and rows["llama:lora"]["adapt_s"] > 0
    assert rows["llama:lora"]["train_steps"] == 8 and rows["bert:probe"]["train_examples"] == 24
    # the recommendation follows the measured table: the best accuracy among the feasible
    best = max(result.rows, key=lambda r: (r["accuracy"], -r["latency_p50_ms"]))
    assert result.recommended == best["candidate"]
    # a size limit only the BERTs and the T5 meet moves the choice to the best of those
    small = SelectConfig(**FAST, constraints=f"size_mb<={rows['llama:zero-shot']['size_mb'] - 0.01}")
    front, recommended, reasons = choose(result.rows, small)
    small_ones = (rows["bert:probe"], rows["bert:similarity"], rows["t5:zero-shot"])
    expected = max(small_ones, key=lambda r: (r["accuracy"], -r["latency_p50_ms"]))
    assert recommended == expected["candidate"] and reasons["llama:lora"] and not reasons["bert:probe"]
    _, none, reasons = choose(result.rows, SelectConfig(constraints="size_mb<=0.001"))
    assert none is None and all(reasons.values())
    saved = json.loads((tmp_path / "select.json").read_text())
    assert saved["recommended"] == result.recommended and "| bert:probe |" in (tmp_path / "select.md").read_text()


def test_similarity_way_picks_the_nearest_label_centroid():
    from lmopt.select.selection_ways import EncoderProbe

    rows = sentiment_rows(40)
    data = load_task_data("classify", rows, train_rows=20)
    way = EncoderProbe(candidate("bert", "encoder", "similarity", tiny_bert), tiny_bert(), data, SelectConfig(**FAST))
    way.adapt()
    x = way._features([e.source for e in data.eval])
    centroids = torch.stack([torch.nn.functional.normalize(way._features(
        [e.source for e in data.train if e.target == label]).mean(0), dim=0) for label in data.labels])
    expected = [data.labels[i] for i in (x @ centroids.T).argmax(-1).tolist()]
    assert way.predict([e.source for e in data.eval]) == expected


def test_encoder_decoder_trains_and_scores_text2text():
    words = ["alpha", "beta", "gamma", "delta", "kappa", "sigma", "omega", "theta"]
    rows = [{"input": f"copy {w}", "output": w} for w in words * 3]
    data = load_task_data("text2text", rows, eval_data=rows[:8])
    cfg = SelectConfig(**{**FAST, "train_steps": 30, "finetune_lr": 3e-3})
    before = Seq2seqWay(candidate("t5", "seq2seq", "zero-shot", tiny_t5), tiny_t5(), data, cfg)
    nll_before, tokens = before.nll(data.eval)
    tuned = Seq2seqWay(candidate("t5", "seq2seq", "finetune", tiny_t5), tiny_t5(), data, cfg)
    assert tuned.adapt()["train_steps"] == 30
    nll_after, tokens_after = tuned.nll(data.eval)
    assert tokens == tokens_after and nll_after / tokens < 0.7 * nll_before / tokens
    result = select("text2text", [candidate("t5", "seq2seq", "finetune", tiny_t5),
                                  candidate("llama", "decoder", "zero-shot", tiny_decoder)], data,
                    config=SelectConfig(**FAST))
    assert result.objective == "ref_nll" and all(r["ref_nll"] > 0 for r in result.rows)


def test_candidates_that_cannot_do_the_task_fail_in_one_line():
    with pytest.raises(LmoptError, match="candidate 'bert:probe': an encoder model cannot do task type 'generate'"):
        check_way("bert:probe", "encoder", "generate", "probe")
    with pytest.raises(LmoptError, match="way 'lora' does not apply to a seq2seq on 'classify' "
                                         r"\(choose zero-shot, finetune\)"):
        check_way("t5:lora", "seq2seq", "classify", "lora")
    no_eos = SimpleNamespace(eos_token_id=None, pad_token="<pad>")
    with pytest.raises(LmoptError, match="its tokenizer has no end-of-sequence token"):
        check_tokenizer("x", no_eos, "decoder", "generate")
    with pytest.raises(LmoptError, match="an encoder model cannot do task type 'text2text'"):
        select("text2text", [candidate("bert", "encoder", None, tiny_bert)], [{"input": "a", "output": "b"}] * 4)


def test_families_from_configs(tiny_dir):
    from transformers import BertConfig, T5Config

    assert family_of(T5Config()) == "seq2seq" and family_of(BertConfig(architectures=["BertModel"])) == "encoder"
    parsed = parse_candidate(str(tiny_dir), "classify")
    assert (parsed.family, parsed.way, parsed.name) == ("decoder", "zero-shot", f"{tiny_dir}:zero-shot")
    assert parse_candidate(f"{tiny_dir}:lora", "generate").way == "lora"


def test_task_data_shapes_and_splits(tmp_path):
    boolq_like = [{"query": f"Passage {i}\nQuestion: q?", "choices": ["no", "yes"], "gold": i % 2} for i in range(10)]
    data = load_task_data("classify", boolq_like, train_rows=6)
    assert len(data.train) == 6 and len(data.eval) == 4 and data.labels == ["no", "yes"]
    assert data.train[1].target == "yes" and data.train[0].source.startswith("Passage 0")
    alpaca = [{"instruction": "Add", "input": "1 and 2", "output": "3"}]
    assert load_task_data("generate", alpaca * 2, train_rows=1).eval[0].source == "Add\n\n1 and 2"
    with pytest.raises(LmoptError, match="train_rows=10 leaves no evaluation rows"):
        load_task_data("classify", boolq_like, train_rows=10)
    with pytest.raises(LmoptError, match="row 1: a classify row needs 'text' and 'label'"):
        load_task_data("classify", [{"prompt": "a", "response": "b"}] * 2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\nnot json\n')
    with pytest.raises(LmoptError, match="bad.jsonl:2: not JSON"):
        load_task_data("classify", str(bad))
    with pytest.raises(LmoptError, match="at least two labels"):
        load_task_data("classify", [{"text": "a", "label": "x"}] * 4)


def test_a_stopped_select_resumes_from_the_rows_it_saved(tmp_path, monkeypatch):
    import lmopt.select.selection as selection
    from lmopt.models import save_tiny_llama

    model_dir = save_tiny_llama(tmp_path / "tiny")
    first = candidate("llama", "decoder", "zero-shot", tiny_decoder)
    on_disk = selection.Candidate("tiny:zero-shot", "decoder", "zero-shot", ref=str(model_dir))
    config = SelectConfig(**FAST, output=str(tmp_path / "out"))
    measured, stop = [], [True]
    real = selection.measure_candidate

    def measure(cand, task, cfg):
        measured.append(cand.name)
        if cand.name == "llama:zero-shot" and stop[0]:
            raise KeyboardInterrupt  # the run stops while measuring the second candidate
        return real(cand, task, cfg)

    monkeypatch.setattr(selection, "measure_candidate", measure)
    with pytest.raises(KeyboardInterrupt):
        select("classify", [on_disk, first], sentiment_rows(), "", config)
    stop[0] = False
    result = select("classify", [on_disk, first], sentiment_rows(), "", config, log=lambda m: None)
    # the saved row is reused; the in-memory candidate (nothing identifies its weights) is measured
    assert measured == ["tiny:zero-shot", "llama:zero-shot", "llama:zero-shot"]
    assert [r["candidate"] for r in result.rows] == ["tiny:zero-shot", "llama:zero-shot"]
    changed = SelectConfig(**{**FAST, "batch_size": 4}, output=str(tmp_path / "out"))
    select("classify", [on_disk], sentiment_rows(), "", changed)
    assert measured[-1] == "tiny:zero-shot" and len(measured) == 4  # other settings: measured again
    select("classify", [on_disk], sentiment_rows(), "", changed)
    assert len(measured) == 4  # ... and saved under them
    weights = next(model_dir.glob("*.safetensors"))
    os.utime(weights, (weights.stat().st_atime, weights.stat().st_mtime + 10))
    select("classify", [on_disk], sentiment_rows(), "", changed)
    assert len(measured) == 5  # the weights changed on disk: measured again
    (tmp_path / "out" / "select.rows.json").write_text("{not json")
    select("classify", [on_disk], sentiment_rows(), "", changed)
    assert len(measured) == 6  # an unreadable file is ignored, not an error
