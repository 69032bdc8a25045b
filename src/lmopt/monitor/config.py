"""Typed configs of `lmopt improve` (`lmopt.monitor.improve`) and `lmopt dashboard`
(`lmopt.monitor.dashboard`), in a module light enough for the CLI to import at start-up.

A YAML map of `ImproveConfig` fields is the loop's recipe form (`src/lmopt/recipes/improve-*.yaml`):
`lmopt improve --config improve-pubmed.yaml`.
"""

from __future__ import annotations

from pydantic import Field

from lmopt.configs import Config
from lmopt.data.config import CleanConfig, PIIConfig, QualityConfig
from lmopt.train.config import FinetuneStepConfig


def default_clean() -> CleanConfig:
    """Chat rows are short: Gopher's document-quality rules are off; dedup, PII and decontamination on."""
    return CleanConfig(quality=QualityConfig(enabled=False), pii=PIIConfig(enabled=True), workers=1)


def default_finetune() -> FinetuneStepConfig:
    return FinetuneStepConfig(method="lora", format="chat", lora_r=16, lora_alpha=32, lr=2e-4, epochs=2,
                              seq_len=512, batch_size=4, val_fraction=0.1, max_minutes=60, save_every=50)


class ImproveConfig(Config):
    """What `lmopt improve` does; every field has a default except the feedback window's store."""

    model: str = "@production"
    """The model to improve: `@alias`, a registered hash or a local model directory."""
    alias: str = "production"
    """The alias the gate compares against and that is promoted on a pass."""
    feedback: str = "days:7"
    """Ratings to learn from: last:N, hours:H, days:D or range:START..END (time of the rating)."""
    suite: str = "quick"
    """The regression suite file (or `quick`)."""
    min_rating: float = Field(default=0.5, ge=-1, le=1)
    """Responses rated at least this are kept as served (ratings run from -1 to 1)."""
    corrections: bool = True
    """Users' corrected answers become training rows (whatever the rating)."""
    min_rows: int = Field(default=16, ge=1)
    """Fewer training rows than this after cleaning: stop without training."""
    decontaminate_suite: bool = True
    """Add the suite's tasks and perplexity texts to `clean.decontaminate`."""
    require_better: list[str] = Field(default_factory=list)
    """Gate metrics (names as in the gate report, e.g. `perplexity/heldout.jsonl`) that must also
    improve beyond their confidence interval for a promotion; empty: passing the gate is enough."""
    replay: bool = True
    """Re-apply the compression steps recorded in the model's lineage after fine-tuning."""
    clean: CleanConfig = Field(default_factory=default_clean)
    finetune: FinetuneStepConfig = Field(default_factory=default_finetune)
    data_dir: str | None = None
    """Evaluation data dir (shared/data layout) for the suite and decontamination."""
    workdir: str | None = None
    """Where the data, step outputs and gate results are kept (default `$LMOPT_HOME/improve`)."""


class DashboardConfig(Config):
    """Where the dashboard reads from and where it listens."""

    registry: str | None = None
    """SQLAlchemy URL of the registry (default: $LMOPT_REGISTRY, else SQLite in $LMOPT_HOME)."""
    traffic: str | None = None
    """SQLAlchemy URL of the traffic store, for feedback (None: $LMOPT_TRAFFIC if set, else no feedback)."""
    metrics_url: str | None = None
    """A server's Prometheus endpoint to show live figures from (e.g. http://127.0.0.1:8000/metrics)."""
    host: str = "127.0.0.1"
    """Interface to listen on (loopback by default: the page has no authentication)."""
    port: int = Field(default=8050, ge=0, le=65535)
    refresh_s: int = Field(default=30, ge=0)
    """Seconds between page reloads (0: never)."""
    examples: int = Field(default=5, ge=0)
    """Feedback examples shown per rating sign."""
