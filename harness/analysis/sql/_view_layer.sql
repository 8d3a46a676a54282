-- The layer level of the analysis view of `harness correlate`: its rows and fixed columns, and
-- the rows its pivoted columns are computed from (view_nc_source, view_nc_down, ft_best_layer for
-- the methods that fine-tune a layer, view_acc_model for the others, view_scores). One row per
-- pre-training run, downstream dataset and layer, with the layer's position; NC values on the
-- split chosen in view_split. The code puts view_split and view_run in front and joins the
-- pivoted columns (one per metric, method and score) onto view_base.
view_nc_source AS (  -- NC values of each layer on the pre-training dataset
    SELECT * FROM nc_named WHERE side = 'source' AND split = (SELECT split FROM view_split)
),
view_nc_down AS (  -- NC values of each layer on downstream datasets
    SELECT * FROM nc_named WHERE side = 'down' AND split = (SELECT split FROM view_split)
),
view_acc_model AS (  -- fine-tuning results of whole models
    SELECT * FROM ft_best WHERE layer IS NULL
),
view_scores AS (  -- scores of the features of one layer
    SELECT * FROM scores WHERE layer IS NOT NULL
),
view_keys AS (  -- every run, downstream dataset and layer with a result
    SELECT run_id, dataset, layer FROM view_nc_down
    UNION SELECT run_id, dataset, layer FROM ft_best_layer
    UNION SELECT run_id, dataset, layer FROM view_scores
),
view_depth AS (  -- where each layer sits
    SELECT run_id, dataset, layer, max(layer_index) AS layer_index, max(depth_frac) AS depth_frac
    FROM view_nc_down
    GROUP BY ALL
),
view_base AS (
    SELECT k.run_id, k.dataset, k.layer, r.* EXCLUDE (run_id), d.layer_index, d.depth_frac
    FROM view_keys k
    LEFT JOIN view_run r ON r.run_id = k.run_id
    LEFT JOIN view_depth d ON d.run_id = k.run_id AND d.dataset = k.dataset AND d.layer = k.layer
)
