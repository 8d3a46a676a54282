-- The model level of the analysis view of `harness correlate`: its rows and fixed columns, and
-- the rows its pivoted columns are computed from (view_nc_source, view_nc_down, ft_best,
-- view_scores). One row per pre-training run and downstream dataset; a run with nothing
-- downstream yet: one row with dataset NULL. NC values are those of the penultimate layer on the
-- split chosen in view_split. The code puts view_split and view_run in front and joins the
-- pivoted columns (one per metric, method and score) onto view_base.
view_nc_source AS (  -- NC values on the pre-training dataset
    SELECT * FROM nc_pen WHERE side = 'source' AND split = (SELECT split FROM view_split)
),
view_nc_down AS (  -- NC values on downstream datasets
    SELECT * FROM nc_pen WHERE side = 'down' AND split = (SELECT split FROM view_split)
),
view_scores AS (  -- scores of the model's own features
    SELECT * FROM scores WHERE layer IS NULL
),
view_pairs AS (  -- every run and downstream dataset with a result
    SELECT run_id, dataset FROM ft_best
    UNION SELECT run_id, dataset FROM nc_named
          WHERE side = 'down' AND split = (SELECT split FROM view_split)
    UNION SELECT run_id, dataset FROM view_scores
),
view_keys AS (  -- those pairs, and the runs without any
    SELECT run_id, dataset FROM view_pairs
    UNION ALL SELECT run_id, NULL FROM pretrain_one
              WHERE run_id NOT IN (SELECT run_id FROM view_pairs)
),
view_base AS (
    SELECT k.run_id, k.dataset, r.* EXCLUDE (run_id)
    FROM view_keys k
    LEFT JOIN view_run r ON r.run_id = k.run_id
)
