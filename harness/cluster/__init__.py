"""Where work runs, exactly once: submitit executors and scheduler states (``launch``), the
pre-training grid (``submit``), the one answer to "is this run new, queued, running or done?"
(``ledger``), the Ray runtime (``rayrun``) and the sweep driver (``sweep``), the live progress
line (``progress``) and the guard that stops what a driver started (``orphans``)."""
