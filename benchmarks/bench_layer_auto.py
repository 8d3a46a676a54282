"""`layer: auto`, measured: the block picked by lowest downstream NC1 against the oracle block.

A small study in a temporary results root: the quick study's checkpoints (its plain cross-entropy
resnet_tiny and vit_tiny runs, pre-trained with ``benchmarks/quick.yaml``'s own settings, as
``harness submit --executor local`` makes them) × its downstream ``mnist5k`` and ``animal_mnist``
at the budget and epochs of its layer-wise arm (``per_class`` 50, 6 epochs). For each
(checkpoint, dataset) pair:

- the block ``layer: auto`` picks (``harness.cluster.sweep.auto_layer``: lowest NC1 of the pre-trained
  features on the trial's own budget samples, among the blocks SCL can use), and the seconds
  that choice took (the NC measurement; the data is decoded beforehand, outside every timing);
- an SCL trial (``harness.finetune.run_trial``) per candidate block (the blocks ``auto`` chooses
  from) × learning rate × seed; per block the learning rate with the best mean validation
  accuracy over seeds (a learning rate where a seed diverged is ruled out), and its mean test
  accuracy; the oracle block is the one with the best of those test accuracies (chosen on
  test accuracy: an upper bound), the best-validation block the one a user who fine-tunes every
  block would keep;
- the gap (oracle − picked, points of test accuracy), the gap to the best-validation block, the
  noise (median over blocks of the standard error of a block's accuracy over seeds), and the
  cost of choosing (seconds of NC measurement) against fine-tuning every candidate block once
  (the sum over blocks of the mean trial time).

Summary: mean gaps over the pairs and the cost ratio (fine-tuning every block / measuring NC).

Goals (issue "Speed where the study spends it", item 4): mean gap ≤ 1 point; choosing costs
less than fine-tuning every block (ratio > 1).

Run: .venv/bin/python benchmarks/bench_layer_auto.py          (full measurement, ~15 min on 2 cores)
     .venv/bin/python benchmarks/bench_layer_auto.py --tiny   (quick check of the script)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Any

import torch
from _bench_util import pretrain, temp_results, verdict

from harness import data, models
from harness import finetune as ft
from harness.cluster import sweep


def candidates(ckpt: str) -> list[str]:
    """The blocks ``layer: auto`` chooses from (``finetune.scl_blocks``: single blocks SCL can
    use, no stem)."""
    model, _ = models.load_checkpoint(ckpt)
    return ft.scl_blocks(model)


def scl_trial(ckpt: str, dataset: str, layer: str, lr: float, seed: int, args) -> dict:
    """One SCL trial: {val, test, wall (seconds, as a sweep's trial runs it)}; a diverged one (NaN loss, as a sweep records it
    ``failed``) has val -inf and test NaN."""
    cfg = ft.TrialConfig(
        ckpt, dataset, "scl", layer, per_class=args.per_class, epochs=args.epochs, lr=lr
    )
    cfg.batch_size, cfg.seed, cfg.nc = args.batch_size, seed, False
    t0 = time.perf_counter()
    try:
        row = ft.run_trial(cfg)
    except FloatingPointError:
        return dict(val=-math.inf, test=math.nan, wall=time.perf_counter() - t0)
    return dict(val=row["val_acc"], test=row["test_acc"], wall=time.perf_counter() - t0)


def layer_scores(ckpt: str, dataset: str, layer: str, args: argparse.Namespace) -> dict[str, Any]:
    """SCL on ``layer``: per lr the mean val/test accuracy over seeds; the lr with the best
    mean val accuracy gives the block's accuracy (a diverged seed rules its lr out) and
    ``test_se``, the standard error of that mean over seeds; ``trial_s`` is the mean time of
    one trial on the block (diverged ones left out)."""
    per_lr, walls = [], []
    for lr in args.lrs:
        runs = [scl_trial(ckpt, dataset, layer, lr, seed, args) for seed in range(args.seeds)]
        ok = [r for r in runs if r["val"] > -math.inf]
        walls += [r["wall"] for r in ok]
        tests = [r["test"] for r in ok]
        se = statistics.stdev(tests) / math.sqrt(len(tests)) if len(tests) > 1 else math.nan
        per_lr.append(
            {k: statistics.mean(r[k] for r in runs) for k in ("val", "test")}
            | dict(lr=lr, diverged=len(runs) - len(ok), test_se=se)
        )
    best = max(per_lr, key=lambda r: r["val"])  # first lr wins ties
    diverged = sum(r["diverged"] for r in per_lr)
    # the time of one trial on this block: the mean of those that did not diverge
    return dict(best, trial_s=statistics.mean(walls or [math.nan]), diverged=diverged)


def one_pair(root, ck: dict[str, Any], dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    for split in ("train", "val", "test"):  # decode outside every timing
        data.load(dataset, split)
    model, _ = models.load_checkpoint(ck["checkpoint"])
    cfg = ft.TrialConfig(ck["checkpoint"], dataset, "scl", "auto", per_class=args.per_class)
    t0 = time.perf_counter()
    picked, why = sweep.auto_layer(cfg, model)  # NC1 on the trial's own budget samples (seed 0)
    nc_s = time.perf_counter() - t0
    scores = {
        ly: layer_scores(ck["checkpoint"], dataset, ly, args) for ly in candidates(ck["checkpoint"])
    }
    oracle = max(
        scores, key=lambda ly: -1 if math.isnan(scores[ly]["test"]) else scores[ly]["test"]
    )
    by_val = max(scores, key=lambda ly: scores[ly]["val"])  # fine-tune all, keep the best val
    ft_s = sum(s["trial_s"] for s in scores.values())
    gap = 100 * (scores[oracle]["test"] - scores[picked]["test"])
    gap_val = 100 * (scores[by_val]["test"] - scores[picked]["test"])
    ses = [s["test_se"] for s in scores.values() if not math.isnan(s["test_se"])]
    se = statistics.median(ses or [math.nan])
    accs = " ".join(f"{ly}={s['test']:.3f}@{s['lr']:g}" for ly, s in scores.items())
    diverged = sum(s["diverged"] for s in scores.values())
    print(f"  {ck['arch']} → {dataset}: test acc per block (lr by val) {accs}; diverged {diverged}")
    print(f"    {why}")
    pair = dict(arch=ck["arch"], dataset=dataset, picked=picked, oracle=oracle, by_val=by_val)
    return dict(pair, gap=gap, gap_val=gap_val, se=100 * se, nc_s=nc_s, ft_s=ft_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="resnet_tiny,vit_tiny")
    ap.add_argument("--datasets", default="mnist5k,animal_mnist")
    ap.add_argument(
        "--study",
        default="benchmarks/quick.yaml",
        help="pre-train as this study does ('none': --pretrain-epochs on --pretrain-limit images)",
    )
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument(
        "--lrs", default="0.02,0.06,0.2", help="learning rates per block, comma-separated"
    )
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings)")
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--pretrain-limit", type=int, default=2000)
    ap.add_argument("--tiny", action="store_true", help="quick check: 1 arch, 1 dataset, 1 lr")
    args = ap.parse_args(argv)
    if args.tiny:
        args.archs, args.datasets, args.lrs, args.seeds, args.epochs = (
            "resnet_tiny",
            "mnist5k",
            "0.1",
            1,
            2,
        )
        args.per_class, args.pretrain_epochs, args.pretrain_limit = 5, 1, 500
        args.study = None  # the tiny check pre-trains 1 epoch on 500 images instead
    if args.study in ("", "none"):
        args.study = None
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.lrs = [float(x) for x in args.lrs.split(",")]
    torch.set_num_threads(args.threads)

    with temp_results("bench-layer-auto-") as root:
        print("pre-training the checkpoints:")
        ckpts, took = pretrain(
            root,
            archs,
            epochs=args.pretrain_epochs,
            limit=args.pretrain_limit,
            study=args.study,
        )
        how = (
            f"as {args.study} pre-trains them"
            if args.study
            else f"{args.pretrain_epochs} epochs on fashion_mnist[:{args.pretrain_limit}]"
        )
        print(
            f"checkpoints: {', '.join(archs)}, {how} ({took:.0f} s); SCL {args.epochs} epochs, per_class "
            f"{args.per_class}, lrs {','.join(f'{x:g}' for x in args.lrs)}, {args.seeds} seeds, "
            f"torch threads {args.threads}"
        )
        pairs = [one_pair(root, ck, ds, args) for ck in ckpts for ds in datasets]
    return summarize(pairs)


def summarize(pairs: list[dict[str, Any]]) -> int:
    print(
        f"\n{'checkpoint':<13}{'dataset':<14}{'picked':<10}{'oracle':<10}{'gap pts':>8}"
        f"  {'best val':<10}{'gap pts':>8}{'SE pts':>8}{'NC s':>8}{'FT-all s':>10}{'ratio':>8}"
    )
    for p in pairs:
        print(
            f"{p['arch']:<13}{p['dataset']:<14}{p['picked']:<10}{p['oracle']:<10}{p['gap']:>8.1f}"
            f"  {p['by_val']:<10}{p['gap_val']:>8.1f}{p['se']:>8.1f}"
            f"{p['nc_s']:>8.2f}{p['ft_s']:>10.2f}{p['ft_s'] / p['nc_s']:>7.1f}×"
        )
    print(
        "  oracle: the block with the best test accuracy; best val: the block a user who "
        "fine-tunes every block keeps (best validation accuracy), and the picked block's gap to "
        "it; SE: median over blocks of the standard error of a block's accuracy over seeds"
    )
    gap = statistics.mean(p["gap"] for p in pairs)
    gap_val = statistics.mean(p["gap_val"] for p in pairs)
    ratio = sum(p["ft_s"] for p in pairs) / sum(p["nc_s"] for p in pairs)
    hits = sum(p["picked"] == p["oracle"] for p in pairs)
    print(
        f"summary: picked = oracle in {hits} of {len(pairs)} pairs; mean gap {gap:.2f} pts "
        f"(goal ≤ 1: {verdict(gap <= 1)}), to the best-validation block {gap_val:.2f} pts; "
        "cost ratio fine-tuning every block / NC "
        f"{ratio:.1f}× (goal > 1: {verdict(ratio > 1)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
