"""`lmopt dashboard`: one local web page over the registry, the traffic store and a live server.

    app = create_dashboard(DashboardConfig(registry="sqlite:///...", traffic="sqlite:///...",
                                           metrics_url="http://127.0.0.1:8000/metrics"))
    serve_dashboard(config)                 # uvicorn on config.host:config.port (loopback by default)

Sections: models with their lineage, alias history, metric trends per task over time (evaluations and
gate measurements), gate results, improvement runs, live serving figures (the server's /metrics,
scraped at each page load), drift charts with the latest check, feedback counts with examples.
The page is rendered on the server (no JavaScript library, nothing from the internet); plots are PNGs
drawn by matplotlib (`/plot/<name>.png`); `/api/summary` returns the same data as JSON. The page
reloads itself every `refresh_s` seconds.
"""

from __future__ import annotations

import datetime
import html
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response

from lmopt.monitor import dashboard_data as data
from lmopt.monitor.config import DashboardConfig
from lmopt.monitor.drift import DriftConfig
from lmopt.monitor.registry import Registry
from lmopt.monitor.traffic import TrafficStore

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}
h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}th{background:#f4f4f4}
.fail{color:#b00;font-weight:bold}.pass{color:#070}.muted{color:#888}code{font-size:.85em}
nav a{margin-right:1em}img{max-width:100%}"""
# Marks the page once every plot has loaded (the headless-browser test reads it from the DOM).
PLOTS_LOADED = """<script>window.addEventListener('load',()=>{const i=[...document.images];
document.body.dataset.plots=i.every(x=>x.complete&&x.naturalWidth>0)?'loaded':'broken';});</script>"""


def _when(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else ""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def table(columns: list[str], rows: list[list[Any]], empty: str = "nothing yet") -> str:
    """An HTML table; cells are escaped unless given as `("html", markup)`."""
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'

    def cell(v: Any) -> str:
        return v[1] if isinstance(v, tuple) and v[0] == "html" else _e(v)

    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict(good: bool | None, yes: str = "pass", no: str = "FAIL") -> tuple[str, str]:
    return ("html", f'<span class="pass">{yes}</span>' if good else f'<span class="fail">{no}</span>')


def summary(registry: Registry, store: TrafficStore | None, config: DashboardConfig) -> dict[str, Any]:
    """Everything the page shows, as data."""
    return {"models": data.models_view(registry), "aliases": data.alias_view(registry),
            "trends": data.trends(registry), "gates": data.gates(registry), "improve": data.improve_runs(registry),
            "drift": data.drift_view(registry), "feedback": data.feedback_view(store, config.examples),
            "serving": data.scrape_metrics(config.metrics_url), "registry": registry.url}


def _sections(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(id, title, html) of each section."""
    models = table(["hash", "name", "aliases", "step", "lineage (newest first)", "registered"], [
        [m["hash"], m["name"], " ".join(f"@{a}" for a in m["aliases"]), m["step"],
         " ← ".join(f"{x['hash'][:8]} ({x['step'] or 'import'})" for x in m["lineage"]), _when(m["registered"])]
        for m in s["models"]], "no registered models")
    aliases = table(["time", "alias", "action", "model", "previous", "by", "reason"], [
        [_when(e["time"]), f"@{e['alias']}", e["action"], e["model_hash"], e["previous_hash"], e["user"], e["reason"]]
        for e in s["aliases"]], "no alias moves")
    gates = table(["time", "suite", "candidate", "baseline", "verdict", "failed metrics", "seconds"], [
        [_when(g["time"]), g["suite"], g["candidate"], g["baseline"], _verdict(g["passed"]), ", ".join(g["failed"]),
         g["seconds"]] for g in s["gates"]], "no gate runs")
    improve = table(["time", "model", "promoted", "feedback rows", "reason"], [
        [_when(r["time"]), r["model"], _verdict(r["promoted"], "yes", "no"), r["feedback"].get("rows"), r["reason"]]
        for r in s["improve"]], "no improvement runs")
    serving = s["serving"]
    if not serving.get("enabled"):
        live = '<p class="muted">no server configured (lmopt dashboard --metrics-url URL)</p>'
    elif "error" in serving:
        live = f'<p class="fail">{_e(serving["url"])}: {_e(serving["error"])}</p>'
    else:
        live = f"<p>{_e(serving['url'])}</p>" + table(["series", "value"], [[k, f"{v:g}"] for k, v in
                                                                        serving["series"].items()])
    drift = s["drift"]
    drift_html = (f"<p>latest check {_e(_when(drift['time']))}; alerts: "
                  f"<span class=\"{'fail' if drift['alerts'] else 'pass'}\">"
                  f"{_e(', '.join(drift['alerts']) or 'none')}</span></p>" if drift["time"] else "")
    drift_html += table(["metric", "value", "threshold", "alert", "note"], [
        [m["name"], m["value"], m["threshold"], _verdict(not m["alert"], "ok", "ALERT"), m["note"]]
        for m in drift["latest"]],
        "no drift checks recorded (lmopt monitor drift --record, or the monitor beside the server)")
    drift_html += '<p><img src="plot/drift.png" alt="drift over time"></p>'
    return [("models", "Models and lineage", models), ("aliases", "Alias history", aliases),
            ("trends", "Metric trends per task", '<img src="plot/trends.png" alt="metric trends">'),
            ("gates", "Gate results", gates), ("improve", "Improvement runs", improve),
            ("serving", "Live serving", live), ("drift", "Drift", drift_html),
            ("feedback", "Feedback", _feedback(s["feedback"]))]


def _feedback(fb: dict[str, Any]) -> str:
    if not fb.get("enabled"):
        return '<p class="muted">no traffic store configured (lmopt dashboard --traffic URL)</p>'
    counts = ", ".join(f"{k} {v}" for k, v in fb["counts"].items())
    out = f"<p>{fb['requests']} recorded requests; feedback (30 days): {_e(counts)}</p>"
    out += '<p><img src="plot/feedback.png" alt="feedback per day"></p>'
    for sign in ("negative", "positive"):
        out += f"<h3>latest {sign}</h3>" + table(["rating", "prompt", "response", "correction", "comment"], [
            [r["rating"], r["prompt"], r["response"], r["correction"], r["comment"]] for r in fb[sign]])
    return out


def render_page(s: dict[str, Any], refresh_s: int) -> str:
    sections = _sections(s)
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{content}</section>' for sid, title, content in sections)
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>lmopt dashboard</title>{refresh}"
            f"<style>{STYLE}</style>{PLOTS_LOADED}</head><body><h1>lmopt dashboard</h1>"
            f"<p class=\"muted\">registry {_e(s['registry'])}</p><nav>{nav}</nav>{body}</body></html>")


def create_dashboard(config: DashboardConfig | None = None) -> FastAPI:
    """The dashboard app (see the module docstring)."""
    config = config or DashboardConfig()
    registry = Registry(config.registry)
    store = TrafficStore(config.traffic) if config.traffic else None
    app = FastAPI(title="lmopt dashboard", docs_url=None, redoc_url=None)
    thresholds = {k: v for k, v in DriftConfig().to_dict().items() if isinstance(v, float)}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return render_page(summary(registry, store, config), config.refresh_s)

    @app.get("/api/summary")
    def api() -> dict[str, Any]:
        return summary(registry, store, config)

    @app.get("/plot/{name}.png")
    def plot(name: str) -> Response:
        if name == "trends":
            png = data.line_plot(data.trends(registry), "metric trends per task")
        elif name == "drift":
            png = data.line_plot(data.drift_view(registry)["series"], "drift over time", thresholds)
        elif name == "feedback":
            png = data.feedback_plot(data.feedback_view(store).get("per_day", {}))
        else:
            raise HTTPException(404, f"no plot '{name}' (trends, drift, feedback)")
        return Response(png, media_type="image/png")

    return app


def serve_dashboard(config: DashboardConfig, log: Any = print) -> None:
    """Serve the dashboard until interrupted."""
    import uvicorn  # lazy: only when serving

    app = create_dashboard(config)
    log(f"lmopt dashboard on http://{config.host}:{config.port}/")
    uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning")).run()
