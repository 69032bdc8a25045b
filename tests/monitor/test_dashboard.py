"""The dashboard: every section filled from a registry, a traffic store and a live /metrics endpoint;
plots served as PNG; and the page rendered by a real headless Chromium (skipped where none is installed)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from fastapi.testclient import TestClient

from lmopt.models import ModelCard, content_hash, save_tiny_llama
from lmopt.monitor import Registry, promote, register_model
from lmopt.monitor.dashboard import DashboardConfig, create_dashboard
from lmopt.monitor.drift import DriftConfig, Window, drift
from lmopt.monitor.traffic import TrafficStore
from lmopt.serve.server import BackgroundServer
from lmopt.serve.telemetry import FeedbackRecord, TrafficRecord

METRICS = "# HELP lmopt_running_requests x\n# TYPE lmopt_running_requests gauge\nlmopt_running_requests 3\n" \
          'lmopt_drift{metric="token_js"} 0.08\nother_metric 1\n'


class MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = METRICS.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def metrics_url():
    server = HTTPServer(("127.0.0.1", 0), MetricsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()


@pytest.fixture(scope="module")
def config(tmp_path_factory, metrics_url):
    root = tmp_path_factory.mktemp("dash")
    registry = Registry(f"sqlite:///{root / 'registry.db'}")
    base = save_tiny_llama(root / "base")
    child = save_tiny_llama(root / "child", seed=1)
    ModelCard(name="child", parent=str(base), parent_hash=content_hash(base), step="quantize",
              config={"bits": 8}).write(child)
    register_model(child, registry)
    promote(base, "production", registry)
    promote(child, "production", registry, reason="gate passed")
    for day, value in enumerate((0.41, 0.44, 0.47)):
        registry.record("evaluate", "m", {"acc": value, "n": 100}, task="arc_easy")
        registry.record("gate-metric", "m", {"candidate": 20.0 - day, "baseline": 21.0}, task="perplexity/pydoc")
    registry.record("gate", str(child), {"passed": False, "failed": ["perplexity/pydoc"], "seconds": 3.5},
                    task="quick", config={"baseline": "@production"})
    registry.record("improve", str(base), {"promoted": False, "reason": "the gate failed: perplexity/pydoc",
                                           "feedback": {"rows": 12}})
    ref = Window([f"Does aspirin help patient {i}?" for i in range(60)])
    for prompts in (ref.prompts, [f"How do I sort a Python list of {i} items?" for i in range(60)]):
        report = drift(ref, Window(prompts), DriftConfig(min_requests=10))
        registry.record("drift", None, {**report.values(), "alerts": [m.name for m in report.alerts]},
                        task="ref", config={"report": report.to_dict()})
    store = TrafficStore(f"sqlite:///{root / 'traffic.db'}")
    now = time.time()
    for i, rating in enumerate((1.0, -1.0, 1.0)):
        store.record(TrafficRecord(f"r{i}", "completions", "tiny", None, f"prompt <{i}>", None, f"answer {i}", 3, 3,
                                   "stop", False, 0.01, 0.02, now))
        store.flush()
        store.add_feedback(FeedbackRecord(f"r{i}", rating, "better answer" if rating < 0 else None, None, now))
    store.close()
    return DashboardConfig(registry=registry.url, traffic=store.url, metrics_url=metrics_url, refresh_s=0)


def test_every_section_is_filled(config):
    client = TestClient(create_dashboard(config))
    page = client.get("/").text
    for section in ("models", "aliases", "trends", "gates", "improve", "serving", "drift", "feedback"):
        assert f'<section id="{section}">' in page
    s = client.get("/api/summary").json()
    [child] = [m for m in s["models"] if m["step"] == "quantize"]
    assert child["aliases"] == ["production"] and [x["step"] for x in child["lineage"]] == ["quantize", None]
    assert [e["action"] for e in s["aliases"]] == ["promote", "promote"] and "gate passed" in page
    assert [p["value"] for p in s["trends"]["arc_easy (acc)"]] == [0.41, 0.44, 0.47]
    assert [p["value"] for p in s["trends"]["gate perplexity/pydoc"]] == [20.0, 19.0, 18.0]
    assert s["gates"][0]["passed"] is False and '<span class="fail">FAIL</span>' in page
    assert s["serving"]["series"] == {"lmopt_running_requests": 3.0, 'lmopt_drift{metric="token_js"}': 0.08}
    assert "token_js" in s["drift"]["alerts"] and len(s["drift"]["series"]["token_js"]) == 2
    assert s["feedback"]["counts"] == {"positive": 2, "negative": 1, "neutral": 0, "corrections": 1}
    assert s["feedback"]["negative"][0]["correction"] == "better answer"
    assert "prompt &lt;1&gt;" in page  # user text is escaped
    for name in ("trends", "drift", "feedback"):
        png = client.get(f"/plot/{name}.png")
        assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    assert client.get("/plot/nope.png").status_code == 404


def test_an_unreachable_server_and_empty_stores_are_shown_not_raised(tmp_path):
    config = DashboardConfig(registry=f"sqlite:///{tmp_path / 'r.db'}", metrics_url="http://127.0.0.1:9/metrics")
    page = TestClient(create_dashboard(config)).get("/").text
    assert "no registered models" in page and "ConnectError" in page and "no traffic store configured" in page


def browser() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(browser() is None, reason="no headless browser: apt-get install -y chromium")
def test_the_page_renders_in_a_headless_browser(config, tmp_path):
    with BackgroundServer(create_dashboard(config)) as server:
        result = subprocess.run(
            [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom",
             server.url + "/"], capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert "<h1>lmopt dashboard</h1>" in dom, result.stderr[-2000:]
    assert 'data-plots="loaded"' in dom  # every <img> (the matplotlib plots) decoded by the browser
    assert "@production" in dom and "lmopt_running_requests" in dom and "better answer" in dom


def test_cli_dashboard_options(monkeypatch, tmp_path):
    import typer
    from typer.testing import CliRunner

    import lmopt.monitor.dashboard as dashboard
    from lmopt.cli.monitoring import register

    seen = {}
    monkeypatch.setattr(dashboard, "serve_dashboard", lambda config, log: seen.setdefault("config", config))
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["dashboard", "--port", "8123", "--metrics-url", "http://127.0.0.1:8000/metrics",
                                      "--registry", f"sqlite:///{tmp_path / 'r.db'}"])
    assert result.exit_code == 0, result.output
    assert seen["config"].port == 8123 and seen["config"].host == "127.0.0.1"
    assert seen["config"].metrics_url.endswith("/metrics")
