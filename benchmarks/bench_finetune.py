"""Fine-tuning benchmark: Layer FT and SCL FT (with the activation cache) against full fine-tuning.

One checkpoint (resnet_tiny pre-trained for a couple of epochs on 3000 fashion_mnist images, in a
temporary results root; a randomly initialised one with ``--random``), one downstream dataset
(mnist5k: 3500 train / 750 val / 750 test), the same epochs and settings for every method.
Printed per method: trainable parameters (and their share of full's), wall time of its first trial
(for Layer FT that one fills the cache; SCL on the same block then finds it warm), the median wall
time of ``--repeats`` later trials (other learning rates, as a sweep runs them, interleaved across
methods so that load from other processes hits all alike), the speed-up over full (warm medians),
and the test accuracy of the first trial (and its difference from full's). Trials include the
validation pass per epoch and the final train/test/NC passes, as a sweep runs them.

Goals (issue): scl/layer ≥ 5× faster than full with the cache; SCL's trainable parameters ≤ 30 %
of full's (aim ≤ 10 %).

Run: .venv/bin/python benchmarks/bench_finetune.py [--epochs 3] [--layers layer2,layer3,layer4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness import data, models
from harness import finetune as ft

DATASET = "mnist5k"


def make_checkpoint(tmp: Path, random_init: bool, pretrain_epochs: int) -> tuple[str, str]:
    """(checkpoint path, how it was made)."""
    if not random_init:
        try:
            from harness.spec.config import PretrainConfig
            from harness.train import pretrain

            cfg = PretrainConfig(
                arch="resnet_tiny",
                dataset="fashion_mnist",
                limit=3000,
                epochs=pretrain_epochs,
                nc_limit=500,
            )
            t0 = time.perf_counter()
            out = pretrain.train(cfg, tmp / "results")
            how = (
                f"resnet_tiny pre-trained {pretrain_epochs} epochs on fashion_mnist[:3000] "
                f"(train acc {out['train_acc']:.3f}, {time.perf_counter() - t0:.0f} s)"
            )
            return out["checkpoint"], how
        except Exception as e:  # noqa: BLE001 - fall back, and say so
            print(f"pre-training failed ({type(e).__name__}: {e}); using a random init")
    torch.manual_seed(0)
    net = models.build_network("resnet_tiny", 10, 1, 28)
    path = models.save_checkpoint(
        tmp / "random.pt", net, arch="resnet_tiny", num_classes=10, in_chans=1, img_size=28
    )
    return str(path), "resnet_tiny, random init"


def trial(ckpt: str, method: str, layer: str | None, args, cache, lr: float) -> dict:
    cfg = ft.TrialConfig(
        ckpt,
        DATASET,
        method,
        layer,
        epochs=args.epochs,
        lr=lr,
        batch_size=args.batch_size,
        per_class=args.per_class,
        seed=0,
    )
    return ft.run_trial(cfg, cache=cache)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--layers", default="layer2,layer3,layer4", help="blocks for layer/scl")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=None)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=2, help="warm trials per method (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier ratios)")
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--random", action="store_true", help="random-init checkpoint, no pre-training")
    args = ap.parse_args(argv)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]

    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        ckpt, how = make_checkpoint(Path(tmp), args.random, args.pretrain_epochs)
        torch.set_num_threads(args.threads)
        print(f"checkpoint: {how}")
        print(
            f"downstream: {DATASET}, epochs {args.epochs}, batch {args.batch_size}, lr {args.lr}, "
            f"per_class {args.per_class or 'all'}, torch threads {args.threads}"
        )
        for split in ("train", "val", "test"):  # decode the data outside the timings
            data.load(DATASET, split)
        cache = ft.ActivationCache(cache_dir=Path(tmp) / "cache")
        warmup = ft.TrialConfig(ckpt, DATASET, "linear_probe", epochs=1, per_class=10, nc=False)
        ft.run_trial(warmup, cache=ft.ActivationCache(enabled=False))

        configs = [("full", None)] + [(m, L) for L in layers for m in ("layer", "scl")]
        first: dict[tuple, dict] = {}  # the lr=args.lr trial (cold for layer: it fills the cache)
        warm: dict[tuple, list[float]] = {c: [] for c in configs}
        for rep in range(args.repeats + 1):  # interleaved, so load changes hit every method
            for c in configs:
                r = trial(ckpt, *c, args, cache, args.lr * 0.5**rep)
                if rep == 0:
                    first[c] = r
                else:
                    warm[c].append(r["wall_s"])

    med = {c: statistics.median(v) for c, v in warm.items()}
    base, t_full = first[configs[0]], med[configs[0]]
    print(
        f"\n{'method':<14}{'trainable':>10}{'share':>8}{'first s':>9}{'warm s':>9}"
        f"{'speed-up':>10}{'test acc':>10}{'Δ acc':>8}"
    )
    for c in configs:
        r = first[c]
        share = r["trainable_params"] / base["trainable_params"]
        print(
            f"{' '.join(x for x in c if x):<14}{r['trainable_params']:>10}{share:>8.1%}"
            f"{r['wall_s']:>9.2f}{med[c]:>9.2f}{t_full / med[c]:>9.1f}×"
            f"{r['test_acc']:>10.3f}{r['test_acc'] - base['test_acc']:>+8.3f}"
        )
    print(
        f"\ncache: {cache.builds} fills, {cache.hits} hits, {cache.ram_bytes / 2**20:.1f} MiB RAM"
    )
    print("goals (speed-up ≥ 5× with the cache; SCL trainable share ≤ 30 %, aim ≤ 10 %):")
    for c in configs[1:]:
        share = first[c]["trainable_params"] / base["trainable_params"]
        speed = t_full / med[c]
        verdict = [f"speed {'met' if speed >= 5 else 'MISSED'} ({speed:.1f}×)"]
        if c[0] == "scl":
            aim = ", aim ≤ 10 % met" if share <= 0.10 else ", aim ≤ 10 % missed"
            verdict.append(f"params {'met' if share <= 0.30 else 'MISSED'} ({share:.1%}{aim})")
        print(f"  {' '.join(c)}: " + "; ".join(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
