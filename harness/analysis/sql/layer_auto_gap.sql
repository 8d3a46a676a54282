-- `layer: auto` against the blocks a study also fine-tuned with SCL: for each pre-training run,
-- downstream dataset and budget where SCL ran at two or more blocks, one of them picked by
-- `layer: auto`, the picked block's test accuracy against the best of the blocks tried (an
-- oracle: chosen by test accuracy). Per block and seed the best-validation configuration, then
-- the mean over seeds. benchmarks/bench_layer_auto.py compares against every block instead.
WITH scl AS (
    SELECT * FROM ft_trial WHERE method = 'scl' AND layer IS NOT NULL
),
per_seed AS (
    SELECT * FROM scl
    QUALIFY row_number() OVER (
        PARTITION BY run_id, dataset, per_class, layer, seed
        ORDER BY val_acc DESC NULLS LAST, lr ASC NULLS LAST, epochs ASC NULLS LAST,
                 weight_decay ASC NULLS LAST) = 1
),
per_block AS (
    SELECT run_id, dataset, per_class, layer, avg(test_acc) AS test_acc, count(*) AS seeds
    FROM per_seed GROUP BY ALL
),
picked AS (
    SELECT DISTINCT run_id, dataset, per_class, layer
    FROM scl WHERE coalesce(layer_choice LIKE 'auto%', false)
)
SELECT p.run_id, p.dataset, p.per_class, p.layer AS picked,
       any_value(a.test_acc) AS picked_acc,
       arg_max(b.layer, b.test_acc) AS best, max(b.test_acc) AS best_acc,
       100 * (max(b.test_acc) - any_value(a.test_acc)) AS gap_pts,
       count(*) AS blocks
FROM picked p
JOIN per_block a ON a.run_id = p.run_id AND a.dataset = p.dataset
     AND a.per_class IS NOT DISTINCT FROM p.per_class AND a.layer = p.layer
JOIN per_block b ON b.run_id = p.run_id AND b.dataset = p.dataset
     AND b.per_class IS NOT DISTINCT FROM p.per_class
GROUP BY ALL
HAVING count(*) >= 2
ORDER BY p.dataset, p.per_class NULLS LAST, p.run_id, p.layer
