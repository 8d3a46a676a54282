"""Fine-tuning a pre-trained backbone on a downstream dataset (DESIGN §4).

Every method puts a fresh linear classifier on the backbone and trains some of it:

- ``linear_probe``: the classifier only, on the penultimate (``pre_logits``) features;
- ``full``: everything;
- ``layer`` (Layer FT): block L and the classifier;
- ``scl`` (SCL FT): block L and the classifier, which reads concat(pool(block L), pre_logits), a
  skip connection from the fine-tuned block straight to the classifier.

Block L is one block of the layer registry (``layer3.1``, ``blocks.7``) or a whole ResNet stage
(``layer3``: all its blocks train, the skip reads its last block). SCL is refused at a block whose
pooled output *is* the penultimate features (a ResNet's last residual block): its skip would add
nothing. A backbone is split into an ordered list of ``Stage``s, one per block (``stages``: a
registry keyed by timm model class) so that the frozen prefix before the first trained stage, the trained block and the rest can
run on their own (``methods``: ``Method`` and ``FinetuneNet``). Without augmentation the frozen
prefix is deterministic, so its outputs are computed once per (checkpoint, data, stage) and kept in
an ``ActivationCache`` (``cache``: RAM up to a budget, then memory-mapped files on disk), shared by
every epoch and every later trial of the process. ``trial`` validates a ``TrialConfig`` (``harness.spec.trial``) and runs it (``run_trial``).
``worker`` runs one trial of a sweep inside its Ray Tune worker (imported on its own, not here).
"""

from harness.finetune.cache import (
    CACHE_DIR_ENV,
    CACHE_MB_ENV,
    DEFAULT_CACHE_MB,
    ActivationCache,
    Activations,
    default_cache,
)
from harness.finetune.methods import (
    METHODS,
    FinetuneNet,
    Method,
    build_net,
    check_layer,
    layer_problem,
    scl_blocks,
)
from harness.finetune.stages import (
    DECOMPOSERS,
    Stage,
    choices,
    decompose,
    register_stages,
    run_stages,
    select,
)
from harness.finetune.trial import (
    EVAL_BATCH,
    NC_MAX_SAMPLES,
    ROW_COLUMNS,
    load_split,
    load_val,
    run_trial,
    validate,
)
from harness.spec.trial import VAL_PER_CLASS, TrialConfig

__all__ = [
    "CACHE_DIR_ENV",
    "CACHE_MB_ENV",
    "DECOMPOSERS",
    "DEFAULT_CACHE_MB",
    "EVAL_BATCH",
    "METHODS",
    "NC_MAX_SAMPLES",
    "ROW_COLUMNS",
    "VAL_PER_CLASS",
    "ActivationCache",
    "Activations",
    "FinetuneNet",
    "Method",
    "Stage",
    "TrialConfig",
    "build_net",
    "check_layer",
    "choices",
    "decompose",
    "default_cache",
    "layer_problem",
    "load_split",
    "load_val",
    "register_stages",
    "run_stages",
    "run_trial",
    "scl_blocks",
    "select",
    "validate",
]
