"""The report of a cleaning run: rows in and out per filter, reasons with examples, length histograms.

Constant memory: lengths go into fixed log-spaced histogram bins, and only the first few examples
of each reason are kept. `write(dir)` writes `report.json`, `report.md` and `lengths.png`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmopt.io import atomic_path, atomic_write_text, write_json

# Filters in the order `clean` applies them; a reason "quality:gopher_word_count" belongs to "quality".
STAGES = ("empty", "quality", "decontaminate", "exact_duplicate", "near_duplicate", "semantic_duplicate")
BINS = np.unique(np.round(np.logspace(0, 6, 49)).astype(int))  # 1 .. 1e6 words, 8 bins per decade
SNIPPET = 200


def _histogram() -> np.ndarray:
    return np.zeros(len(BINS) + 1, dtype=np.int64)


@dataclass
class CleanReport:
    """Counts and examples of one `clean` run (see the module docstring)."""

    source: str = ""
    rows_in: int = 0
    rows_out: int = 0
    bad_rows: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    """Removed rows per reason (`stage:detail`)."""
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    pii: dict[str, int] = field(default_factory=dict)
    """Placeholders put in, per kind."""
    rows_with_pii: int = 0
    boilerplate_lines: int = 0
    rows_normalized: int = 0
    """Rows whose text normalization changed."""
    decontamination: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    max_examples: int = 5
    hist_before: np.ndarray = field(default_factory=_histogram)
    hist_after: np.ndarray = field(default_factory=_histogram)

    def add_length(self, words: int, after: bool) -> None:
        hist = self.hist_after if after else self.hist_before
        hist[np.searchsorted(BINS, words, side="right")] += 1

    def remove(self, reason: str, line: int, text: str, detail: str | None = None) -> None:
        self.removed[reason] = self.removed.get(reason, 0) + 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            ex = {"line": line, "text": text[:SNIPPET] + ("..." if len(text) > SNIPPET else "")}
            if detail:
                ex["detail"] = detail
            kept.append(ex)

    def stage_counts(self) -> list[dict[str, Any]]:
        """Rows in, removed and out of each filter, in the order they run."""
        rows, out = self.rows_in, []
        for stage in STAGES:
            gone = sum(n for reason, n in self.removed.items() if reason.split(":")[0] == stage)
            out.append({"filter": stage, "in": rows, "removed": gone, "out": rows - gone})
            rows -= gone
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "bad_rows": self.bad_rows, "filters": self.stage_counts(),
                "removed": dict(sorted(self.removed.items(), key=lambda kv: -kv[1])),
                "examples": self.examples, "pii": self.pii, "rows_with_pii": self.rows_with_pii,
                "boilerplate_lines_removed": self.boilerplate_lines, "rows_normalized": self.rows_normalized,
                "decontamination": self.decontamination, "seconds": round(self.seconds, 2),
                "length_words": {"bins": BINS.tolist(), "before": self.hist_before.tolist(),
                                 "after": self.hist_after.tolist()}}

    def markdown(self) -> str:
        lines = [f"# Cleaning report: {self.source}", "",
                 f"{self.rows_in} rows in, {self.rows_out} out; {self.bad_rows.get('total', 0)} bad rows "
                 f"skipped; {self.seconds:.1f} s.", "",
                 "| filter | in | removed | out |", "|---|---|---|---|"]
        lines += [f"| {s['filter']} | {s['in']} | {s['removed']} | {s['out']} |" for s in self.stage_counts()]
        if self.pii:
            lines += ["", f"PII replaced in {self.rows_with_pii} rows: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(self.pii.items()))]
        if self.bad_rows.get("total"):
            lines += ["", "## Bad rows", ""]
            lines += [f"- {reason}: {n} (lines {', '.join(map(str, self.bad_rows['lines'][reason][:20]))})"
                      for reason, n in self.bad_rows["counts"].items()]
        lines += ["", "## Removed, with examples", ""]
        for reason, n in sorted(self.removed.items(), key=lambda kv: -kv[1]):
            lines.append(f"### {reason}: {n}")
            for ex in self.examples.get(reason, []):
                extra = f" ({ex['detail']})" if "detail" in ex else ""
                snippet = ex["text"].replace("\n", " ").replace("`", "'")
                lines.append(f"- line {ex['line']}{extra}: `{snippet}`")
            lines.append("")
        lines += ["![lengths](lengths.png)", ""]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Before/after histograms of the length in words (log x axis), as a PNG."""
        import matplotlib  # lazy: 0.25 s that every Ray worker importing `clean` would pay

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        edges = np.concatenate([[0.5], BINS, [BINS[-1] * 1.33]])
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.stairs(self.hist_before, edges, label=f"before ({self.rows_in})", fill=True, alpha=0.4)
        ax.stairs(self.hist_after, edges, label=f"after ({self.rows_out})", linewidth=2)
        ax.set_xscale("log")
        used = np.nonzero(self.hist_before + self.hist_after)[0]
        if len(used):  # show the occupied bins only, with one empty bin either side
            ax.set_xlim(edges[max(used[0] - 1, 0)], edges[min(used[-1] + 2, len(edges) - 1)])
        ax.set_xlabel("length (words)")
        ax.set_ylabel("rows")
        ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:  # a reader never sees half a PNG
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        return Path(path)

    def write(self, directory: str | Path) -> Path:
        directory = Path(directory)
        write_json(directory / "report.json", self.to_dict())
        atomic_write_text(directory / "report.md", self.markdown())
        self.plot(directory / "lengths.png")
        return directory
