"""ASHA, measured: the same fine-tuning search space as a full grid and with ``scheduler: asha``.

One pre-trained checkpoint (resnet_tiny, a few epochs on a seeded fashion_mnist subset, made as
``harness submit --executor local`` makes it), downstream ``digits``, methods ``linear_probe``
and ``layer`` (block ``layer3``), a grid of learning rates (log-spaced) × weight decays × seeds,
run twice through the harness's real Ray Tune sweep (``harness.cluster.sweep.run``), each in its own
temporary results root: once with ``scheduler: none`` and once with ``scheduler: asha``
(``grace_period`` 1, ``reduction_factor`` 3, ``max_t`` = the epochs), same seeds.

ASHA runs twice: on the spec as a grid and on the same trials listed in another seeded random
order (an empty grid, the trials as ``base`` + ``include`` points: same trial ids). Under
``scheduler: asha`` the harness itself hands the trials to Ray Tune in a random order seeded by
``search_seed`` (in the grid's product order each new trial tends to beat the ones at its rung
and is promoted), so the two runs are two random orders: the spread between them is the
order's effect on the compute saved.

Printed: trial-epochs (compute) of each run, counted from the Ray experiment's per-trial
results (the last ``training_iteration`` of each trial: one report per epoch) and checked
against the ``finetune`` table; the ratio grid / ASHA; wall times; what the store recorded for
the ASHA run; and whether both runs pick the same best trial (highest validation accuracy, ties
by grid order), the test accuracy of each pick, and the rank of ASHA's pick in the grid's
ordering. ASHA's pick is the trial with the best validation accuracy among those it ran to the
last epoch, read from Ray's reports (the validation accuracy the harness records is the best
epoch's); its test accuracy is that of the same trial (same settings and seed, so the same
training, checked through the validation accuracies) in the grid run.

Goal (issue "Speed where the study spends it", item 3): grid / ASHA trial-epochs ≥ 3× with the
same best configuration, or one within about a point of test accuracy.

Run: .venv/bin/python benchmarks/bench_asha.py            (full measurement, a few minutes)
     .venv/bin/python benchmarks/bench_asha.py --tiny     (quick check of the script)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _bench_util import pretrain, rows, temp_results, verdict

from harness.cluster import sweep
from harness.finetune import worker
from harness.spec.config import SweepSpec

NAME = "bench-asha"


def sweep_spec(ckpt: str, args: argparse.Namespace, scheduler: str, order: str) -> SweepSpec:
    """The search space as a grid (``order`` "grid"; under ASHA the harness shuffles it), or
    the same trials in a seeded random order ("shuffled": the first as ``base``, an empty grid,
    the rest as ``include`` entries; the trial ids are the same)."""
    lrs = np.geomspace(args.lr_min, args.lr_max, args.lrs)
    space = dict(
        name=NAME,
        checkpoints={"paths": [ckpt]},
        base={k: getattr(args, k) for k in ("dataset", "epochs", "batch_size", "layer", "nc")},
        grid=dict(
            method=args.methods,
            lr=[float(f"{x:.3g}") for x in lrs],
            weight_decay=args.wds,
            seed=list(range(args.seeds)),
        ),
        scheduler=scheduler,
        grace_period=args.grace,
        reduction_factor=args.rf,
        cpus_per_trial=1,
    )
    where = f"bench sweep ({scheduler}, {order} order)"
    if order == "shuffled":
        points = SweepSpec.from_dict(space, where).points()
        random.Random(args.order_seed).shuffle(points)
        space.update(base=points[0], grid={}, include=points[1:])
    return SweepSpec.from_dict(space, where)


def ray_trials(root: Path) -> dict[str, dict[str, Any]]:
    """{trial id: {epochs, val, config}} from each Ray trial's ``result.json`` in the one
    experiment under ``<root>/ray/``: epochs = its last ``training_iteration``, val = the best
    validation accuracy it reported."""
    (exp,) = [p for p in (root / "ray").glob(f"{NAME}-*") if p.is_dir()]
    out: dict[str, dict[str, Any]] = {}
    for res in exp.glob("*/result.json"):
        reports = [json.loads(x) for x in res.read_text().splitlines() if x.strip()]
        if not reports:
            continue
        t = reports[-1]["config"]["t"]
        out[t["meta"]["trial_id"]] = dict(
            epochs=max(int(r["training_iteration"]) for r in reports),
            val=max(float(r.get("val_acc", float("nan"))) for r in reports),
            config=t["trial"],
        )
    return out


def run_one(ckpt: str, args: argparse.Namespace, scheduler: str, order: str) -> dict[str, Any]:
    """One sweep in its own results root: wall time, Ray's per-trial results, the `finetune`
    rows, what a re-run of the same spec would find pending, running-marks left behind."""
    with temp_results(f"bench-asha-{scheduler}-") as root:
        spec = sweep_spec(ckpt, args, scheduler, order)
        t0 = time.perf_counter()
        sweep.run(spec, root=root, echo=lambda line: print(f"  {line}"))
        wall = time.perf_counter() - t0
        recorded = rows(
            "SELECT trial_id, method, lr, weight_decay, seed, status, epochs, val_acc, test_acc "
            "FROM finetune",
            root,
            "finetune",
        )
        return dict(
            wall=wall,
            ray=ray_trials(root),
            rows=recorded,
            pending=len(sweep.pending_trials(sweep.expand(spec, root), root)),
            marks=len(list((root / "ray").glob(f"{NAME}-*/{worker.RUNNING}/*.json"))),
        )


def grid_order(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials best first: validation accuracy, ties by the grid's order (method, lr, weight
    decay, seed) — never by test accuracy."""
    trials = sorted(trials, key=lambda r: (r["method"], r["lr"], r["weight_decay"], r["seed"]))
    return sorted(trials, key=lambda r: -r["val_acc"])


def describe(r: dict[str, Any]) -> str:
    return f"{r['method']} lr={r['lr']:g} wd={r['weight_decay']:g} seed={r['seed']}"


def report_records(asha: dict[str, Any], epochs: int) -> None:
    """What the harness recorded for an ASHA run: rows for stopped and for finished trials."""
    ray, by_row = asha["ray"], {r["trial_id"]: r for r in asha["rows"]}
    stopped = [t for t, r in ray.items() if r["epochs"] < epochs]
    finished = [t for t, r in ray.items() if r["epochs"] >= epochs]
    print(
        f"  {len(stopped)} trials stopped early, {len(finished)} ran all {epochs} epochs; "
        f"`finetune` rows: {sum(t in by_row for t in stopped)} for the stopped, "
        f"{sum(t in by_row for t in finished)} for the finished ({len(asha['rows'])} in all); "
        f"a re-run of the spec would find {asha['pending']} of {len(ray)} pending; "
        f"running-marks left: {asha['marks']}"
    )
    if len(asha["rows"]) < len(ray):
        print(
            "  -> WRONG: a trial the scheduler stops is ended inside tune.report (SystemExit), "
            "which the trial worker (harness.finetune.worker) does not catch: no `finetune` or `runs` row. ASHA's default "
            "stop_last_trials=True also stops every trial at max_t on its last report, so even "
            "finished trials record nothing"
        )


def compare_best(grid: dict[str, Any], asha: dict[str, Any], epochs: int) -> bool:
    """Best trial of the grid vs ASHA's (see the module docstring); False if none to compare."""
    g_rows = {r["trial_id"]: r for r in grid["rows"] if r["status"] == "done"}
    g_order = grid_order(list(g_rows.values()))
    finished = [t for t, r in asha["ray"].items() if r["epochs"] >= epochs and t in g_rows]
    if not finished or not g_order:
        print("  no trial finished in both runs: no best configuration to compare")
        return False
    # ASHA's pick from its own reports; its test accuracy from the same trial in the grid run
    a_order = grid_order([dict(g_rows[t], val_acc=asha["ray"][t]["val"]) for t in finished])
    gb, ab = g_order[0], a_order[0]
    rank = 1 + sum(r["val_acc"] > g_rows[ab["trial_id"]]["val_acc"] for r in g_order)
    same_cfg = all(gb[k] == ab[k] for k in ("method", "lr", "weight_decay"))
    gap = 100 * (gb["test_acc"] - ab["test_acc"])
    print(f"  best (ASHA): {describe(ab)}: val {ab['val_acc']:.3f}, test {ab['test_acc']:.3f}")
    print(
        f"  same best trial: {'yes' if gb['trial_id'] == ab['trial_id'] else 'no'}; same "
        f"(method, lr, wd): {'yes' if same_cfg else 'no'}; ASHA's pick ranks {rank} of "
        f"{len(g_order)} in the grid by val acc; test acc gap grid − ASHA {gap:+.1f} pts"
    )
    diffs = [abs(asha["ray"][t]["val"] - g_rows[t]["val_acc"]) for t in finished]
    print(
        f"  check: {len(finished)} trials ran all epochs in both runs; max |Δ best val acc| "
        f"between the runs {max(diffs):.4f} (0: the same training)"
    )
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--methods", default="linear_probe,layer", help="comma-separated")
    ap.add_argument("--layer", default="layer3", help="block for the layer method")
    ap.add_argument("--lrs", type=int, default=8, help="learning rates, log-spaced")
    ap.add_argument("--lr-min", type=float, default=1e-3)
    ap.add_argument("--lr-max", type=float, default=1.0)
    ap.add_argument("--wds", default="0,0.0001,0.001", help="weight decays, comma-separated")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--grace", type=int, default=1, help="ASHA grace_period")
    ap.add_argument("--rf", type=int, default=3, help="ASHA reduction_factor")
    ap.add_argument(
        "--orders", default="grid,shuffled", help="trial orders ASHA sees: grid and/or shuffled"
    )
    ap.add_argument("--order-seed", type=int, default=0, help="seed of the shuffled order")
    ap.add_argument("--nc", action="store_true", help="measure NC of every finished trial")
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--pretrain-limit", type=int, default=2000)
    ap.add_argument("--tiny", action="store_true", help="quick check: 4 lrs, 1 wd, 1 seed")
    args = ap.parse_args(argv)
    if args.tiny:
        args.lrs, args.wds, args.seeds, args.epochs = 4, "0", 1, 3
        args.methods, args.pretrain_epochs, args.pretrain_limit = "linear_probe", 1, 500
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.wds = [float(w) for w in args.wds.split(",")]
    orders = [o.strip() for o in args.orders.split(",") if o.strip()]

    with temp_results("bench-asha-ckpt-") as ck_root:
        print("pre-training the checkpoint:")
        (ck,), took = pretrain(
            ck_root, ["resnet_tiny"], epochs=args.pretrain_epochs, limit=args.pretrain_limit
        )
        print(
            f"checkpoint: resnet_tiny, {args.pretrain_epochs} epochs on fashion_mnist"
            f"[:{args.pretrain_limit}] ({took:.0f} s)"
        )
        print("grid (scheduler: none):")
        grid = run_one(ck["checkpoint"], args, "none", "grid")
        ashas = {}
        for order in orders:
            print(f"ASHA (grace_period {args.grace}, reduction_factor {args.rf}), {order} order:")
            ashas[order] = run_one(ck["checkpoint"], args, "asha", order)
    return summarize(args, grid, ashas)


def summarize(args: argparse.Namespace, grid: dict[str, Any], ashas: dict[str, Any]) -> int:
    n = len(grid["ray"])
    print(
        f"\nsearch space: {args.dataset}, {'/'.join(args.methods)}, {args.lrs} lrs × "
        f"{len(args.wds)} wds × {args.seeds} seeds per method = {n} trials, "
        f"{args.epochs} epochs each"
    )
    g_ep = sum(r["epochs"] for r in grid["ray"].values())
    rows_ep = sum(r["epochs"] for r in grid["rows"] if r["status"] == "done")
    print(f"grid: {g_ep} trial-epochs (its finetune rows say {rows_ep}), wall {grid['wall']:.1f} s")
    g_rows = [r for r in grid["rows"] if r["status"] == "done"]
    if g_rows:
        gb = grid_order(g_rows)[0]
        print(f"  best (grid): {describe(gb)}: val {gb['val_acc']:.3f}, test {gb['test_acc']:.3f}")
    ok = True
    for order, asha in ashas.items():
        a_ep = sum(r["epochs"] for r in asha["ray"].values())
        ratio = g_ep / a_ep
        print(
            f"ASHA, trials in {order} order: {a_ep} trial-epochs, wall {asha['wall']:.1f} s; "
            f"grid/ASHA compute {ratio:.2f}× (goal ≥ 3×: {verdict(ratio >= 3)}), "
            f"wall {grid['wall'] / asha['wall']:.2f}×"
        )
        report_records(asha, args.epochs)
        ok = compare_best(grid, asha, args.epochs) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
