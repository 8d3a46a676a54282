"""Per-layer NC of a model on a dataset (`harness measure`), single process or DDP.

Under torch.distributed every rank measures its shard (``indices[rank::world]``, no padding, so
no sample counts twice), the per-layer accumulators are all-reduced, and rank 0 writes the rows.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

from harness import store
from harness.errors import HarnessError


@dataclass
class MeasureSpec:
    """One ``harness measure`` run. ``layers``: 'all' or names / indices at block granularity
    (``models.select_layers``); ``pool``: how ViT tokens are pooled, ``auto`` (default) as the
    model's own classifier does (CLS for ``global_pool='token'``, else the patch mean)."""

    dataset: str
    model: str | None = None
    checkpoint: str | None = None
    split: str = "train"
    layers: str = "all"
    batch_size: int = 256
    limit: int | None = None
    pool: str = "auto"
    seed: int = 0
    ncc: bool = False  # second pass for ncc_acc / nc4 (always run where a layer needs it)
    data_root: str | None = None
    data_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if bool(self.model) == bool(self.checkpoint):
            raise HarnessError("measure: give exactly one of --model NAME or --checkpoint PATH")
        if self.batch_size < 1:
            raise HarnessError(f"measure: --batch-size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise HarnessError(f"measure: --limit must be >= 1, got {self.limit}")


@dataclass
class LayerResult:
    layer: str
    index: int
    depth_frac: float
    dim: int
    metrics: dict[str, float]


def build_model(spec: MeasureSpec, info) -> tuple[Any, dict[str, Any], bool, str | None]:
    """(model, identity for provenance, whether its classifier belongs to this dataset, the
    pre-training run the checkpoint records: what its NC rows are attributed to, never the
    file's path, which changes when a results root is copied or moved)."""
    import torch

    from harness import models

    if spec.checkpoint:
        model, meta = models.load_checkpoint(spec.checkpoint)
        if meta["in_chans"] != info.in_chans:
            raise HarnessError(
                f"checkpoint {spec.checkpoint}: {meta['in_chans']} input channels, "
                f"dataset {spec.dataset} has {info.in_chans}"
            )
        ident = dict(checkpoint_sha256=store.sha256_file(spec.checkpoint), arch=meta["arch"])
        own_head = (
            meta.get("meta", {}).get("dataset") == spec.dataset
            and meta["num_classes"] == info.num_classes
        )
        return model, ident, own_head, meta.get("meta", {}).get("run_id")
    torch.manual_seed(spec.seed)
    model = models.create_model(spec.model, info.num_classes, info.in_chans, info.image_size)
    return model, dict(arch=spec.model, init_seed=spec.seed), False, None


def measure_model(
    model,
    ds,
    layers,
    *,
    pool: str | None = None,
    batch_size: int = 256,
    ncc: bool = False,
    classifier=None,
    dist=None,
    progress: bool = False,
    desc: str = "",
) -> tuple[list[LayerResult], int]:
    """NC of ``layers`` of ``model`` over dataset ``ds``: one forward pass per batch feeds every
    layer's accumulator; ``pool`` None: the model's own pooling (``models.default_pool``), so
    the features NC sees are the ones its classifier sees. Under torch.distributed (``dist``) each rank reads ``rank::world`` and the
    statistics are all-reduced, so every rank returns the global result. The model is put in eval
    mode (and restored), gradients are off. Returns (results, number of samples)."""
    import torch

    from harness import models
    from harness.nc import NCAccumulator

    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    reduce = dist is not None and dist.initialized
    was_training = model.training
    model.eval()
    try:
        extractor = models.LayerFeatures(model, layers, pool)
        idx = list(range(rank, len(ds), world))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(ds, idx), batch_size=batch_size, shuffle=False
        )
        num_classes = ds.info.num_classes
        # a second pass for NCC runs anyway: then every layer takes the projected plan, whose
        # pass 2 costs O(B·D·K) instead of pass 1's D×D scatter, O(B·D²)
        mode = "projected" if ncc else "auto"
        accs = {ly.name: NCAccumulator(num_classes, mode=mode) for ly in layers}

        def run_pass(second: bool) -> None:
            label = f"{desc} pass {2 if second else 1}"
            with _progress(progress and rank == 0, label, len(loader)) as tick:
                for x, y in loader:
                    feats, _ = extractor(x)
                    for name, f in feats.items():
                        if not second:
                            accs[name].update(f, y)
                        elif name == models.PRE_LOGITS and classifier is not None:
                            accs[name].update_second(f, y, *classifier)
                        else:
                            accs[name].update_second(f, y)
                    tick()

        run_pass(False)
        if reduce:
            for a in accs.values():
                a.all_reduce()
        if ncc or any(a.mode == "projected" for a in accs.values()):
            run_pass(True)
            if reduce:
                for a in accs.values():
                    a.all_reduce_second()
        results = []
        for ly in layers:
            a = accs[ly.name]
            cls = (
                classifier if (ly.kind == "pre_logits" and classifier is not None) else (None, None)
            )
            results.append(LayerResult(ly.name, ly.index, ly.depth_frac, a.dim, a.compute(*cls)))
        return results, accs[layers[0].name].count
    finally:
        model.train(was_training)


def nc_rows(results: list[LayerResult], n: int, **common: Any) -> list[dict[str, Any]]:
    """Long-format `nc` rows (one per layer and metric) sharing ``common`` columns."""
    from harness.nc import store_rows

    return [
        dict(
            common,
            layer=r.layer,
            layer_index=r.index,
            depth_frac=r.depth_frac,
            metric=m,
            variant=v,
            value=val,
            n=n,
            dim=r.dim,
        )
        for r in results
        for m, v, val in store_rows(r.metrics)
    ]


def measure(
    spec: MeasureSpec,
    *,
    progress: bool = False,
    write: bool = True,
    skip_done: bool = True,
    root: str | os.PathLike | None = None,
) -> list[LayerResult]:
    """Measure NC of every selected layer; returns the results (on every rank) and, on rank 0,
    writes `nc` rows and a `runs` row unless ``write`` is false. A measurement whose config is
    already done in the store is skipped (returns [])."""
    spec.validate()

    from harness import data, distributed, models

    dist = distributed.init_distributed()
    try:
        ds = data.load(
            spec.dataset,
            spec.split,
            root=spec.data_root,
            limit=spec.limit,
            seed=spec.seed,
            **spec.data_kwargs,
        )
        info = ds.info
        model, ident, own_head, source_run = build_model(spec, info)
        layers = models.select_layers(model, spec.layers)
        pool = models.resolve_pool(model, spec.pool)
        config = dict(
            kind="measure",
            **ident,
            dataset=spec.dataset,
            split=spec.split,
            layers=[ly.name for ly in layers],
            limit=spec.limit,
            pool=pool,
            data_kwargs=spec.data_kwargs,
            ncc=spec.ncc,
        )
        prov = store.Provenance.collect(config, "measure")
        if write and skip_done and store.is_done(prov.run_id, root):
            return []

        cls = models.classifier_weights(model) if own_head else None
        results, n = measure_model(
            model,
            ds,
            layers,
            pool=pool,
            batch_size=spec.batch_size,
            ncc=spec.ncc,
            classifier=cls,
            dist=dist,
            progress=progress,
            desc=f"{spec.dataset}/{spec.split}",
        )
        if write and dist.rank == 0:
            rows = nc_rows(
                results,
                n,
                run_id=prov.run_id,
                checkpoint=store.store_path(spec.checkpoint, root) if spec.checkpoint else None,
                source_run_id=source_run,
                model=ident["arch"],
                dataset=spec.dataset,
                split=spec.split,
                num_classes=info.num_classes,
            )
            store.append("nc", rows, root)
            store.record_run(prov, "done", root, attempt=0)
        return results
    finally:
        distributed.shutdown_distributed()


class _progress:
    """A rich progress bar when enabled; otherwise a no-op ticker."""

    def __init__(self, enabled: bool, desc: str, total: int):
        self.enabled, self.desc, self.total = enabled, desc, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task(self.desc, total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
        return False


def main(args: argparse.Namespace) -> int:
    """`harness measure`: parse-level glue only."""
    spec = MeasureSpec(
        dataset=args.dataset,
        model=args.model,
        checkpoint=args.checkpoint,
        split=args.split,
        layers=args.layers,
        batch_size=args.batch_size,
        limit=args.limit,
        pool=args.pool,
        seed=args.seed,
        ncc=args.ncc,
    )
    results = measure(spec, progress=not args.no_progress, root=args.results)
    root = store.results_root(args.results)
    if not results:
        print(f"already measured: same config is done under {root} (0 rows written)")
        return 0
    keys = ["nc1", "nc1_quotient", "cdnv", "nc2_etf", "ncc_acc"]
    print(f"{'layer':<14}{'dim':>6}" + "".join(f"{k:>14}" for k in keys))
    for r in results:
        vals = "".join(f"{r.metrics[k]:>14.4g}" if k in r.metrics else f"{'-':>14}" for k in keys)
        print(f"{r.layer:<14}{r.dim:>6}{vals}")
    print(f"wrote {sum(len(r.metrics) for r in results)} rows to {root / 'nc'}")
    return 0
