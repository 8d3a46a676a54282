-- Building blocks shared by the saved analysis queries. `harness report` and `harness correlate`
-- put these CTEs in front of each query, so every query a report prints runs as shown with
-- `harness query "<text>"`.
--
-- Conventions:
-- * NC metric names follow harness.nc: `nc1` is the pinv variant, other variants are suffixed
--   (`nc1_svd`, `nc1_quotient`); repeated measurements of the same layer are averaged.
-- * An NC row is on the *source* side when its dataset is the run's pre-training dataset, else on
--   the *downstream* side. A row written by `harness measure --checkpoint` carries its own run id;
--   it is attributed to the pre-training run its checkpoint records (source_run_id), so a store
--   copied or moved elsewhere keeps the attribution; rows that recorded none (written before the
--   column) fall back to the checkpoint path.
-- * NC rows written by fine-tuning trials (run_id = trial id: the fine-tuned features) are kept
--   apart: nc_named holds the *pre-trained* features, nc_trial the fine-tuned ones of each trial.
-- * The penultimate layer is the largest layer_index measured for a run (or trial), dataset and
--   split.
-- * Fine-tuning: done trials only; seeds are averaged per configuration (method, layer, budget,
--   epochs, lr, weight decay); the configuration with the best mean validation accuracy is
--   reported with its mean test accuracy. Nothing is chosen on test accuracy: ties on
--   validation accuracy go to fewer trainable parameters, then the smaller lr, epochs, weight
--   decay, then the layer name. per_class NULL means all data and counts as the largest budget.
pretrain_one AS (  -- one row per pre-training run (a repeated run: its longest-trained row)
    SELECT * FROM pretrain
    QUALIFY row_number() OVER (
        PARTITION BY run_id ORDER BY epochs DESC NULLS LAST, wall_s DESC NULLS LAST) = 1
),
run_arch AS (  -- the architecture of every run id, from the first table that names it
    SELECT run_id, arg_min(arch, prio) AS arch
    FROM (
        SELECT run_id, arch, 0 AS prio FROM pretrain
        UNION ALL SELECT run_id, arch, 1 FROM finetune
        UNION ALL SELECT run_id, arch, 2 FROM scores
        UNION ALL SELECT run_id, model, 3 FROM nc
    )
    WHERE arch IS NOT NULL
    GROUP BY run_id
),
nc_named AS (  -- NC values under one name per metric/variant, with their side
    SELECT coalesce(pr.run_id, ps.run_id, pc.run_id, n.run_id) AS run_id, n.dataset, n.split,
           n.layer, n.layer_index, n.depth_frac,
           CASE WHEN n.variant IS NULL OR n.variant = 'pinv' THEN n.metric
                ELSE n.metric || '_' || n.variant END AS metric,
           CASE WHEN n.dataset = coalesce(pr.dataset, ps.dataset, pc.dataset) THEN 'source'
                ELSE 'down' END AS side,
           avg(n.value) AS value
    FROM nc n
    LEFT JOIN pretrain_one pr ON pr.run_id = n.run_id
    LEFT JOIN pretrain_one ps ON pr.run_id IS NULL AND ps.run_id = n.source_run_id
    LEFT JOIN pretrain_one pc
           ON pr.run_id IS NULL AND n.source_run_id IS NULL AND pc.checkpoint = n.checkpoint
    -- pre-trained features only: rows under a fine-tuning trial id describe fine-tuned features
    WHERE n.run_id NOT IN (SELECT trial_id FROM finetune)
    GROUP BY ALL
),
nc_pen AS (  -- the penultimate layer of each run, dataset and split
    SELECT * FROM nc_named
    QUALIFY layer_index = max(layer_index) OVER (PARTITION BY run_id, dataset, split)
),
ft_config AS (  -- done trials, seeds averaged per configuration
    SELECT run_id, dataset, method, layer, per_class, epochs, lr, weight_decay,
           avg(val_acc) AS val_acc, avg(test_acc) AS test_acc,
           stddev_pop(test_acc) AS test_acc_std, count(*) AS seeds,
           max(trainable_params) AS trainable_params, max(total_params) AS total_params,
           sum(wall_s) AS wall_s
    FROM finetune
    WHERE status = 'done'
    GROUP BY ALL
),
ft_layer AS (  -- best configuration per run, dataset, method, layer and budget
    SELECT * FROM ft_config
    QUALIFY row_number() OVER (
        PARTITION BY run_id, dataset, method, layer, per_class
        ORDER BY val_acc DESC NULLS LAST, trainable_params ASC NULLS LAST, lr ASC NULLS LAST,
                 epochs ASC NULLS LAST, weight_decay ASC NULLS LAST, layer ASC NULLS FIRST) = 1
),
ft_budget AS (  -- best configuration per run, dataset, method and budget (over layers)
    SELECT * FROM ft_layer
    QUALIFY row_number() OVER (
        PARTITION BY run_id, dataset, method, per_class
        ORDER BY val_acc DESC NULLS LAST, trainable_params ASC NULLS LAST, lr ASC NULLS LAST,
                 epochs ASC NULLS LAST, weight_decay ASC NULLS LAST, layer ASC NULLS FIRST) = 1
),
ft_best AS (  -- ft_budget at the largest budget of each run, dataset and method
    SELECT * FROM ft_budget
    QUALIFY coalesce(per_class, 9223372036854775807) = max(coalesce(per_class, 9223372036854775807))
        OVER (PARTITION BY run_id, dataset, method)
),
ft_best_layer AS (  -- ft_layer at the largest budget of each run, dataset, method and layer
    SELECT * FROM ft_layer
    WHERE layer IS NOT NULL
    QUALIFY coalesce(per_class, 9223372036854775807) = max(coalesce(per_class, 9223372036854775807))
        OVER (PARTITION BY run_id, dataset, method, layer)
),
nc_trial AS (  -- NC values of the fine-tuned features of each done trial (run_id = trial id)
    SELECT t.trial_id, n.split, n.layer, n.layer_index, n.depth_frac,
           CASE WHEN n.variant IS NULL OR n.variant = 'pinv' THEN n.metric
                ELSE n.metric || '_' || n.variant END AS metric,
           avg(n.value) AS value
    FROM nc n
    JOIN (SELECT DISTINCT trial_id FROM finetune WHERE status = 'done') t ON t.trial_id = n.run_id
    GROUP BY ALL
),
nc_trial_pen AS (  -- the penultimate (pre_logits) layer of each trial's fine-tuned features
    SELECT * FROM nc_trial
    QUALIFY layer_index = max(layer_index) OVER (PARTITION BY trial_id, split)
),
ft_trial AS (  -- one row per done trial (a trial recorded twice: its longest attempt)
    SELECT * FROM finetune
    WHERE status = 'done'
    QUALIFY row_number() OVER (PARTITION BY trial_id ORDER BY wall_s DESC NULLS LAST) = 1
),
ft_seed AS (  -- per checkpoint, dataset, method, budget and seed: the trial a user would keep.
              -- Layers chosen by the sweep (`layer: auto`) first, else the best validation
              -- accuracy over layers and hyper-parameters (ties as above, never test accuracy)
    SELECT * FROM ft_trial
    QUALIFY row_number() OVER (
        PARTITION BY run_id, checkpoint, dataset, method, per_class, seed
        ORDER BY coalesce(layer_choice LIKE 'auto%', false) DESC, val_acc DESC NULLS LAST,
                 trainable_params ASC NULLS LAST, lr ASC NULLS LAST, epochs ASC NULLS LAST,
                 weight_decay ASC NULLS LAST, layer ASC NULLS FIRST) = 1
)
