"""DDP throughput: training images/s of 2 ranks on the 2-node local SLURM cluster (one task and
one CPU per fake node) vs 1 process using the whole machine, same model, data and global batch.

This machine has 2 cores: both setups get the same 2 cores, so the ratio shows DDP's overhead
(gradient all-reduce over gloo, per-rank Python) rather than a speed-up.
Run with the cluster up (slurm/up): .venv/bin/python benchmarks/bench_ddp.py
"""

from __future__ import annotations

import tempfile

import torch

from harness.cluster import launch
from harness.spec import config
from harness.train import pretrain


def main() -> None:
    cfg = config.PretrainConfig(
        arch="resnet_tiny",
        dataset="fashion_mnist",
        limit=6000,
        epochs=2,
        batch_size=128,
        nc_limit=200,
        nc_layers="pre_logits",
    )
    with tempfile.TemporaryDirectory(prefix="bench-ddp-", dir="/tmp") as tmp:
        ex = launch.make_executor(
            "slurm", f"{tmp}/jobs", config.Resources(nodes=2, tasks_per_node=1, timeout_min=20)
        )
        job = ex.submit(pretrain.PretrainJob(), cfg.model_dump(mode="json"), f"{tmp}/ddp")
        ddp = job.results()[0]["images_per_s"]
        torch.set_num_threads(2)
        one = pretrain.train(cfg, f"{tmp}/one")["images_per_s"]
    print(f"1 process (2 threads)         : {one:8.0f} images/s")
    print(f"2 ranks on 2 fake nodes (gloo): {ddp:8.0f} images/s")
    print(f"ratio 2-rank / 1-process      : {ddp / one:8.2f}x  (2 cores in all)")


if __name__ == "__main__":
    main()
