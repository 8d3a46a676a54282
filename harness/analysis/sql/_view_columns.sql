-- The names that the analysis view of `harness correlate` turns into columns, one row each:
-- NC metrics measured, of pre-trained or fine-tuned features (kind 'metric'), scores and score parts written for whole models or for
-- their layers ('score', level 'model' or 'layer'), fine-tuning methods with done trials
-- ('method') and the methods fine-tuned layer by layer ('layer_method').
SELECT DISTINCT 'metric' AS kind, metric AS name, NULL AS part, NULL AS level FROM nc_named
UNION
SELECT DISTINCT 'metric', metric, NULL, NULL FROM nc_trial
UNION ALL
SELECT DISTINCT 'score', score, part, CASE WHEN layer IS NULL THEN 'model' ELSE 'layer' END
FROM scores
UNION ALL
SELECT DISTINCT 'method', method, NULL, NULL FROM finetune WHERE status = 'done'
UNION ALL
SELECT DISTINCT 'layer_method', method, NULL, NULL FROM ft_best_layer
