"""Drift: JS divergence and KS against scipy, windows with known divergences, the noise floor, windows
from files and the traffic store, and the periodic monitor (Prometheus figures, log, webhook, registry)."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from lmopt.errors import LmoptError
from lmopt.monitor import Registry
from lmopt.monitor.drift import (
    DriftConfig,
    Window,
    dominant_script,
    drift,
    js_divergence,
    ks_statistic,
    prompt_nlls,
)
from lmopt.monitor.drift_monitor import DriftMonitor, DriftMonitorConfig
from lmopt.monitor.drift_windows import file_window, load_window, parse_window
from lmopt.monitor.traffic import TrafficStore
from lmopt.serve.telemetry import FeedbackRecord, TrafficRecord

from .monitor_cli import cli

RAW = {"permutations": 0, "min_requests": 1}  # the plain distances, no noise floor
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon"]


def brute_js(p, q):
    p, q = np.asarray(p, float) / np.sum(p), np.asarray(q, float) / np.sum(q)
    m = (p + q) / 2
    kl = lambda a: sum(x * np.log2(x / y) for x, y in zip(a, m, strict=True) if x > 0)  # noqa: E731
    return (kl(p) + kl(q)) / 2


def test_js_divergence_matches_scipy_and_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.random(12) * (rng.random(12) > 0.3), rng.random(12)
        expected = brute_js(p, q)
        assert js_divergence(p, q) == pytest.approx(expected, abs=1e-12)
        spatial = pytest.importorskip("scipy.spatial.distance")
        assert js_divergence(p, q) == pytest.approx(spatial.jensenshannon(p, q, base=2) ** 2, abs=1e-9)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([3, 1], [6, 2]) == pytest.approx(0.0, abs=1e-15)


def test_ks_statistic_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for _ in range(10):
        a, b = rng.integers(0, 30, 80), rng.integers(5, 40, 50)  # ties included
        assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic)


def window_of(counts: list[int]) -> Window:
    """One single-word prompt per count unit: the window's token histogram is exactly `counts`."""
    return Window([w for w, n in zip(WORDS, counts, strict=True) for _ in range(n)], source="synthetic")


def test_token_js_of_synthetic_windows_is_the_divergence_of_their_histograms():
    p, q = [40, 30, 20, 10, 0], [10, 10, 20, 30, 30]
    report = drift(window_of(p), window_of(q), DriftConfig(**RAW, token_js=0.05))
    token = {m.name: m for m in report.metrics}["token_js"]
    assert token.value == pytest.approx(brute_js(p, q), abs=1e-6)
    assert token.alert and token.current["distance"] == token.value
    # every prompt is one word long: the length distributions are equal
    assert {m.name: m for m in report.metrics}["prompt_length"].value == 0


def test_rare_tokens_share_one_bin():
    # vocab 2: the reference's two most frequent words get a bin each; the rest share the "other" bin
    p, q = [50, 30, 10, 10, 0], [50, 30, 0, 5, 15]
    token = {m.name: m for m in drift(window_of(p), window_of(q), DriftConfig(**RAW, vocab=2)).metrics}["token_js"]
    assert token.value == pytest.approx(brute_js([50, 30, 20], [50, 30, 20]), abs=1e-9)


def test_noise_floor_removes_the_sampling_bias_of_same_distribution_windows():
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(400)]
    weights = 1 / np.arange(1, 401)
    weights /= weights.sum()

    def prompts(n, probs):
        return [" ".join(rng.choice(vocab, size=12, p=probs)) for _ in range(n)]

    ref, same = Window(prompts(400, weights)), Window(prompts(150, weights))
    raw = drift(ref, same, DriftConfig(permutations=0))
    floored = drift(ref, same, DriftConfig())
    by = lambda r: {m.name: m for m in r.metrics}  # noqa: E731
    assert by(raw)["token_js"].value > 0.02  # finite samples differ by chance...
    assert abs(by(floored)["token_js"].value) < 0.01 and not floored.alerts  # ... which the floor removes
    shifted = weights[::-1].copy()
    report = drift(ref, Window(prompts(150, shifted)), DriftConfig())
    assert by(report)["token_js"].alert and by(report)["token_js"].value > 0.1


def test_script_share_language_and_lengths():
    latin = [f"How do I open file number {i} in Python?" for i in range(60)]
    cyrillic = [f"Как открыть файл номер {i} в программе?" for i in range(30)]
    report = drift(Window(latin), Window(latin[:30] + cyrillic), DriftConfig(**RAW))
    by = {m.name: m for m in report.metrics}
    assert by["script"].value == pytest.approx(0.5) and by["script"].alert
    assert by["script"].current == {"CYRILLIC": 0.5, "LATIN": 0.5, "distance": 0.5, "noise_floor": 0.0}
    assert by["language"].alert and by["language"].current["ru"] == 0.5
    assert dominant_script("这是中文文本") == "CJK" and dominant_script("123 !") == "NONE"


def test_outputs_and_feedback_metrics():
    n = 100
    ref = Window(["q"] * n, ["an answer"] * n, ["stop"] * n, [2] * n, ratings=[1.0] * 30)
    cur = Window(["q"] * n, [""] * 10 + ["an answer"] * 70 + ["long"] * 20, ["stop"] * 80 + ["length"] * 20,
                 [0] * 10 + [2] * 70 + [64] * 20, ratings=[-1.0] * 20 + [1.0] * 40)
    by = {m.name: m for m in drift(ref, cur, DriftConfig(**RAW)).metrics}
    assert by["bad_output"].value == pytest.approx(0.3) and by["bad_output"].alert
    assert by["output_length"].value == pytest.approx(0.2)  # CDFs at 2 tokens: 0.8 vs 1
    assert by["feedback_rate"].value == pytest.approx(0.3) and by["feedback_rate"].alert
    assert by["negative_feedback"].value == pytest.approx(20 / 60) and by["negative_feedback"].alert
    assert by["loss"].value is None and "no model" in by["loss"].note


def test_small_windows_compute_nothing():
    report = drift(Window(["a b"] * 10), Window(["c d"] * 10), DriftConfig(min_requests=50))
    assert not report.alerts and all(m.value is None for m in report.metrics)


def test_prompt_loss_matches_a_forward_pass(tiny):
    import torch

    prompts = ["def f(x): return x", "The quick brown fox jumps"]
    got = prompt_nlls(tiny, prompts, 256)
    for text, value in zip(prompts, got, strict=True):
        ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
        full = torch.tensor([[tiny.tokenizer.bos_token_id, *ids]])
        with torch.no_grad():
            logits = tiny.model(full).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits.float(), full[0, 1:])
        assert value == pytest.approx(float(nll), rel=1e-4)
    report = drift(Window(prompts * 3), Window(prompts[::-1] * 3), DriftConfig(**RAW, tokens="model"), model=tiny)
    loss = {m.name: m for m in report.metrics}["loss"]
    assert loss.value == pytest.approx(0.0, abs=1e-5) and not loss.alert
    # a clear change alerts; the same change with a Welch t below loss_min_t does not
    strange = drift(Window(prompts * 3), Window(["zq xv kj wp"] * 6), DriftConfig(**RAW, loss=0.01), model=tiny)
    loss = {m.name: m for m in strange.metrics}["loss"]
    assert loss.alert and loss.current["welch_t"] >= 3
    strict = drift(Window(prompts * 3), Window(["zq xv kj wp"] * 6), DriftConfig(**RAW, loss=0.01, loss_min_t=1e9),
                   model=tiny)
    assert not {m.name: m for m in strict.metrics}["loss"].alert


def test_model_tokens_need_a_model():
    with pytest.raises(LmoptError, match="needs the served model"):
        drift(Window(["a"]), Window(["b"]), DriftConfig(tokens="model"))


# --- windows ----------------------------------------------------------------------------------------


def test_window_specs():
    assert parse_window("last:50").last == 50
    assert parse_window("hours:2", now=10_000).since == 10_000 - 7200
    w = parse_window("range:2025-01-01..1700000000")
    assert w.until == 1_700_000_000 and w.since == pytest.approx(time.mktime((2025, 1, 1, 0, 0, 0, 0, 0, -1)))
    for bad in ("last:0", "last:x", "range:2025", "range:yesterday..", "nofile.jsonl"):
        with pytest.raises(LmoptError, match="window"):
            parse_window(bad)


def test_file_windows(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
            {"prompt": "Q2", "response": "A2", "rating": -1},
            {"instruction": "Do X", "input": "with Y", "output": "done"}]
    path = tmp_path / "w.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    w = file_window(path)
    assert w.prompts == ["Hi?", "Q2", "Do X\n\nwith Y"] and w.responses == ["Hello.", "A2", "done"]
    assert w.ratings == [-1.0]
    (tmp_path / "p.txt").write_text("first prompt\n\nsecond prompt\n")
    assert file_window(tmp_path / "p.txt").prompts == ["first prompt", "second prompt"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(LmoptError, match=r"bad.jsonl:2: row is invalid JSON") as err:
        file_window(tmp_path / "bad.jsonl")
    assert "\n" not in str(err.value)
    (tmp_path / "none.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(LmoptError, match="none.jsonl:1: row has no prompt"):
        file_window(tmp_path / "none.jsonl")


def record(i: int, prompt: str, created: float, response: str = "An answer.", finish: str = "stop") -> TrafficRecord:
    return TrafficRecord(f"cmpl-{i}", "completions", "tiny", "abc123", prompt, None, response, 5, 3, finish,
                         False, 0.01, 0.02, created)


@pytest.fixture()
def store(tmp_path):
    s = TrafficStore(f"sqlite:///{tmp_path / 'traffic.db'}")
    yield s
    s.close()


def test_traffic_windows_carry_their_ratings(store):
    now = time.time()
    for i in range(10):
        store.record(record(i, f"question {i}", now - 100 + i))
    store.flush()
    store.add_feedback(FeedbackRecord("cmpl-8", -1.0, None, None, now))
    store.add_feedback(FeedbackRecord("cmpl-2", 1.0, None, None, now))
    w = load_window("last:3", store)
    assert w.prompts == ["question 7", "question 8", "question 9"] and w.ratings == [-1.0]
    assert len(load_window("hours:1", store)) == 10
    with pytest.raises(LmoptError, match="no recorded requests"):
        load_window("range:1..2", store)


# --- the monitor ------------------------------------------------------------------------------------


class Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def webhook():
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Hook.received = []
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_monitor_publishes_alerts_logs_posts_and_records(store, tmp_path, webhook, caplog):
    ref = tmp_path / "ref.jsonl"
    ref.write_text("\n".join(json.dumps({"prompt": f"Does aspirin reduce fever in patient {i}?"})
                             for i in range(100)) + "\n")
    registry = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    published = {}
    config = DriftMonitorConfig(reference=str(ref), window=60, every_requests=30, webhook=webhook,
                                drift=DriftConfig(min_requests=30))
    monitor = DriftMonitor(store, config, registry=registry,
                           publish=lambda metric, value, alert: published.__setitem__(metric, (value, alert)))
    now = time.time()
    for i in range(60):
        store.record(record(i, f"Does aspirin reduce fever in patient {100 + i}?", now + i))
    store.flush()
    report = monitor.check()
    assert report is not None and not report.alerts and published["token_js"][1] is False
    assert monitor.check() is None  # no new requests: nothing to do
    with caplog.at_level(logging.WARNING, logger="lmopt.monitor.drift"):
        for i in range(60, 120):
            store.record(record(i, f"How do I use a Python list comprehension with dict item {i}?", now + i))
        store.flush()
        report = monitor.check()
    assert {"token_js", "prompt_length"} <= {m.name for m in report.alerts}
    assert published["token_js"][1] is True and published["token_js"][0] > 0.05
    assert "drift alert: token_js" in caplog.text
    [post] = Hook.received
    assert post["event"] == "lmopt.drift" and "token_js" in [a["metric"] for a in post["alerts"]]
    rows = registry.query(kind="drift")
    assert len(rows) == 2 and "token_js" in rows[0]["metrics"]["alerts"]


def test_monitor_thread_runs_checks_and_survives_errors(store, tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text("\n\n".join(f"prompt {i}" for i in range(20)))
    config = DriftMonitorConfig(reference=str(ref), interval_s=0.05, every_requests=1,
                                drift=DriftConfig(min_requests=1))
    monitor = DriftMonitor(store, config).start()
    try:
        store.record(record(1, "prompt 1", time.time()))
        store.flush()
        deadline = time.monotonic() + 20
        while monitor.last_report is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        monitor.stop()
    assert monitor.last_report is not None and monitor.last_report.n_current == 1


# --- the CLI ----------------------------------------------------------------------------------------


def test_cli_drift_between_files(tmp_path):
    def write(name, prompts):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        return str(path)

    ref = write("ref.jsonl", [f"Does aspirin reduce fever in patient group {i}?" for i in range(80)])
    same = write("same.jsonl", [f"Does aspirin reduce fever in patient group {i}?" for i in range(80, 140)])
    shifted = write("py.jsonl", [f"How do I write a Python generator that yields {i} items lazily?" for i in range(60)])
    status, _ = cli(["monitor", "drift", "--reference", ref, "--current", same])
    assert status == 0
    out = tmp_path / "report.json"
    registry = f"sqlite:///{tmp_path / 'reg.db'}"
    status, text = cli(["monitor", "drift", "--reference", ref, "--current", shifted, "--token-js", "0.05",
                        "--set", "min_requests=10", "--json", str(out), "--record", "--registry", registry])
    assert status == 1 and "ALERT" in text
    saved = json.loads(out.read_text())
    assert "token_js" in saved["alerts"] and saved["config"]["min_requests"] == 10
    assert Registry(registry).query(kind="drift")[0]["metrics"]["alerts"] == saved["alerts"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert cli(["monitor", "drift", "--reference", ref, "--current", str(bad)])[0] == 2
    status, message = cli(["monitor", "drift", "--reference", ref, "--current", "last:x"])
    assert status == 2 and "window 'last:x'" in message
    status, message = cli(["monitor", "drift", "--reference", ref, "--current", same, "--set", "vocab=0"])
    assert status == 2 and "vocab" in message


@pytest.mark.integration
def test_the_embedded_models_loss_tells_pubmed_from_python_questions(embedded, data_dir):
    """The `loss` threshold (0.5 nats) against the real model: two PubMed samples agree, Python moves it."""
    questions = [v["QUESTION"] for _, v in sorted(json.loads((data_dir / "pubmedqa" / "ori_pqal.json")
                                                             .read_text()).items())]
    python = [f"Is it true that the {w} statement in Python {v}?" for w, v in
              [("assert", "raises AssertionError when its expression is false"),
               ("with", "calls __enter__ and __exit__ on a context manager"),
               ("yield", "turns a function into a generator"), ("global", "binds a name at module level"),
               ("return", "leaves the function with a value"), ("del", "removes a binding of a name"),
               ("import", "finds and loads a module then binds it"), ("raise", "throws an exception object"),
               ("pass", "does nothing at all"), ("nonlocal", "rebinds a name of the enclosing function")]] * 3
    config = DriftConfig(min_requests=10)
    same = drift(Window(questions[:30]), Window(questions[500:530]), config, model=embedded)
    shifted = drift(Window(questions[:30]), Window(python), config, model=embedded)
    loss = lambda r: {m.name: m for m in r.metrics}["loss"]  # noqa: E731
    assert not loss(same).alert and loss(same).current["welch_t"] < 3  # 30 prompts: 0.5 nats can be chance
    assert loss(shifted).alert and abs(loss(shifted).value) > 0.5 and loss(shifted).current["welch_t"] > 3
