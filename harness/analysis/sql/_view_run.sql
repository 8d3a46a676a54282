-- Part of the analysis view of `harness correlate`, at every level: what it says about each
-- pre-training run (architecture, pre-training setup and accuracy on the pre-training data).
view_run AS (
    SELECT run_id, ra.arch, p.dataset AS source, p.loss, p.augment, p.head_depth, p.epochs,
           p.train_acc AS source_train_acc, p.test_acc AS source_test_acc
    FROM run_arch ra
    FULL JOIN pretrain_one p USING (run_id)
)
