"""One worker process of a study: `python -m lmopt.tune.worker JOB.json INDEX`.

`lmopt tune --workers K` starts K of these on this machine. Each gets 1/K of the CPU threads, opens
the shared study and runs trials until the budget or the timeout is used up.
"""

from __future__ import annotations

import sys

from lmopt.errors import LmoptError
from lmopt.hardware import apply_threads, detect_hardware
from lmopt.tune.config import TuneJob
from lmopt.tune.study import run_worker


def main(argv: list[str]) -> int:
    job = TuneJob.from_yaml(argv[0])  # JSON is YAML
    index = int(argv[1]) if len(argv) > 1 else 0
    apply_threads(max(1, detect_hardware().threads // job.tune.workers))
    try:
        run_worker(job, index)
    except LmoptError as exc:
        print(f"lmopt: error: worker {index}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
