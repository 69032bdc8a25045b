"""The periodic drift check beside a server: read the traffic store, compare, publish, alert.

`lmopt.serve` may not import `lmopt.monitor` (package layering), so the server does not start this
itself; whoever starts the server starts the monitor beside it:

    store = TrafficStore(url)
    app = build_app(model, engine_config, server_config, traffic=store)
    monitor = start_drift_monitor(store, DriftMonitorConfig(reference="reference.jsonl"),
                                  publish=app.state.telemetry.set_drift)
    ...                                   # serve; monitor.stop() at shutdown

Every `interval_s` the monitor counts the recorded requests; once `every_requests` new ones have
arrived it compares the most recent `window` with the reference (`lmopt.monitor.drift`), publishes
every figure through `publish(metric, value, alert)` (the server's `/metrics`: `lmopt_drift`,
`lmopt_drift_alert`), logs a warning for each metric that starts alerting, POSTs the alerts as JSON
to `webhook` when one is set, and stores the report in the registry (kind `drift`) for the dashboard.
Per-request figures (tokens, script, language, the model's loss) are computed once and cached.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pydantic import Field

from lmopt.configs import Config
from lmopt.monitor.drift import DriftConfig, DriftReport, drift, features
from lmopt.monitor.drift_features import Features, Window, merge_features
from lmopt.monitor.drift_windows import load_window
from lmopt.monitor.traffic import TrafficStore

log = logging.getLogger("lmopt.monitor.drift")
Publish = Callable[[str, float, bool | None], Any]


class DriftMonitorConfig(Config):
    """The periodic check: what to compare with, how often, and where alerts go."""

    reference: str
    """The reference window: a dataset file of in-distribution prompts, or a fixed traffic window
    (`range:START..END`; see `lmopt.monitor.drift_windows`)."""
    window: int = Field(default=200, ge=1)
    """The most recent requests compared with the reference at each check."""
    every_requests: int = Field(default=20, ge=1)
    """Check once this many new requests were recorded since the last check."""
    interval_s: float = Field(default=15.0, gt=0)
    """How often the traffic store is polled for new requests."""
    webhook: str | None = None
    """URL that gets a JSON POST when metrics start alerting (and when they recover)."""
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    record: bool = True
    """Store each report in the registry (kind `drift`), for trends and the dashboard."""
    drift: DriftConfig = Field(default_factory=DriftConfig)


class DriftMonitor:
    """Checks drift on the traffic store (see the module docstring); `check()` once, `start()` a thread."""

    def __init__(self, store: TrafficStore, config: DriftMonitorConfig, *, publish: Publish | None = None,
                 registry: Any = None, model: Any = None, reference: Window | None = None) -> None:
        self.store, self.config, self.publish, self.registry, self.model = store, config, publish, registry, model
        self._reference_window = reference
        self._reference: Features | None = None
        self._cache: OrderedDict[str, Features] = OrderedDict()  # response id -> that request's features
        self._last_count = 0
        self._alerting: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_report: DriftReport | None = None

    def reference(self) -> Features:
        if self._reference is None:
            window = self._reference_window or load_window(self.config.reference, self.store)
            self._reference = features(window, self.config.drift, self.model)
        return self._reference

    def _request(self, row: dict[str, Any]) -> Features:
        key = row["response_id"]
        if key not in self._cache:
            one = Window([row["prompt"] or ""], [row["response"] or ""], [row["finish_reason"]],
                         [row["completion_tokens"]])
            self._cache[key] = features(one, self.config.drift, self.model)
            while len(self._cache) > 2 * self.config.window:
                self._cache.popitem(last=False)
        return self._cache[key]

    def check(self, force: bool = False) -> DriftReport | None:
        """Compare the latest window with the reference when enough new requests came (or `force`)."""
        count = self.store.count()
        if not force and count - self._last_count < self.config.every_requests:
            return None
        self._last_count = count
        rows = self.store.requests(last=self.config.window)
        ids = {r["response_id"] for r in rows}
        since = rows[0]["created"] if rows else None
        ratings = [f["rating"] for f in self.store.feedback(since=since) if f["response_id"] in ids]
        current = merge_features([self._request(r) for r in rows], f"traffic last:{self.config.window}", ratings)
        report = drift(self.reference(), current, self.config.drift)
        self._publish(report)
        self.last_report = report
        return report

    def _publish(self, report: DriftReport) -> None:
        for m in report.metrics:
            if m.value is not None and self.publish is not None:
                self.publish(m.name, m.value, m.alert)
        now = {m.name for m in report.alerts}
        started, recovered = now - self._alerting, self._alerting - now
        for m in report.alerts:
            if m.name in started:
                log.warning("drift alert: %s = %.4g over %s (threshold %s; %d current vs %d reference requests)",
                            m.name, m.value, report.current, m.threshold, report.n_current, report.n_reference)
        for name in sorted(recovered):
            log.info("drift recovered: %s back under its threshold", name)
        if (started or recovered) and self.config.webhook:
            post_webhook(self.config.webhook, report, sorted(started), sorted(recovered),
                         self.config.webhook_timeout_s)
        self._alerting = now
        if self.config.record and self.registry is not None:
            summary = {**report.values(), "alerts": [m.name for m in report.alerts], "n_current": report.n_current}
            self.registry.record("drift", None, summary, task=report.reference,
                                 config={"monitor": self.config.to_dict(), "report": report.to_dict()})

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            try:
                self.check()
            except Exception:  # a failed check must not end the monitor; the next one tries again
                log.exception("drift check failed")

    def start(self) -> DriftMonitor:
        self._thread = threading.Thread(target=self._run, name="lmopt-drift-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def post_webhook(url: str, report: DriftReport, started: list[str], recovered: list[str],
                 timeout: float) -> bool:
    """POST `{event, alerts, recovered, report}` as JSON; failures are logged, never raised."""
    import httpx  # lazy: only when a webhook is configured

    by_name = {m.name: m for m in report.metrics}
    payload = {"event": "lmopt.drift", "time": time.time(),
               "alerts": [{"metric": n, "value": by_name[n].value, "threshold": by_name[n].threshold}
                          for n in started],
               "recovered": recovered, "report": report.to_dict()}
    try:
        httpx.post(url, json=payload, timeout=timeout).raise_for_status()
        return True
    except httpx.HTTPError as exc:
        log.warning("drift webhook %s failed: %s", url, exc)
        return False


def start_drift_monitor(store: TrafficStore, config: DriftMonitorConfig, *, publish: Publish | None = None,
                        registry: Any = None, model: Any = None) -> DriftMonitor:
    """Start the periodic check in a daemon thread (reference read now, so a bad one fails at once)."""
    monitor = DriftMonitor(store, config, publish=publish, registry=registry, model=model)
    monitor.reference()
    return monitor.start()
