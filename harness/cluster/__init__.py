"""Where work runs, exactly once: submitit executors and scheduler states (``launch``), the
pre-training grid (``submit``), the one answer to "is this run new, queued, running or done?"
(``ledger``), the Ray runtime (``rayrun``), the sweep driver (``sweep``; each trial's Ray worker
is ``harness.finetune.worker``) and its SLURM submission (``slurm_sweep``, with the sbatch
script in ``templates/``), the live progress line (``progress``) and the guard that stops what
a driver started (``orphans``)."""
