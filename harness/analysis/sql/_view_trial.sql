-- The trial level of the analysis view of `harness correlate`: one row per done fine-tuning
-- trial, with its setup and accuracies (acc = test accuracy, val_acc), the pre-training run it
-- started from, and the rows its pivoted columns are computed from: ft_<m> the NC values of the
-- trial's fine-tuned penultimate (pre_logits) features on the downstream train split,
-- down_<m> those of the pre-trained penultimate features (view_nc_down). The code puts
-- view_split and view_run in front and joins the pivoted columns onto view_base.
view_nc_trial AS (  -- NC of the fine-tuned features (the trial's own train split)
    SELECT * FROM nc_trial_pen WHERE split = 'train'
),
view_nc_down AS (  -- NC of the pre-trained features on downstream datasets
    SELECT * FROM nc_pen WHERE side = 'down' AND split = (SELECT split FROM view_split)
),
view_base AS (
    SELECT t.trial_id, t.run_id, t.dataset, r.* EXCLUDE (run_id, arch),
           coalesce(t.arch, r.arch) AS arch, t.checkpoint, t.method, t.layer, t.layer_choice,
           t.per_class, t.seed, t.epochs AS ft_epochs, t.lr, t.weight_decay,
           t.test_acc AS acc, t.val_acc, t.train_acc, t.trainable_params, t.total_params
    FROM ft_trial t
    LEFT JOIN view_run r ON r.run_id = t.run_id
)
