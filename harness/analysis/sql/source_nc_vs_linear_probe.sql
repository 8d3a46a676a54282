-- Source NC1 (penultimate layer, pre-training data, train split) against the linear-probe
-- accuracy of the same checkpoint on each downstream dataset, one point per pre-training run.
-- Question 1: do features that collapse less on the source data transfer better?
SELECT f.dataset, a.arch, s.run_id, p.loss, p.augment, p.head_depth,
       s.value AS source_nc1, f.test_acc AS acc_linear_probe, f.per_class
FROM nc_pen s
JOIN pretrain_one p ON p.run_id = s.run_id
JOIN ft_best f ON f.run_id = s.run_id AND f.method = 'linear_probe'
LEFT JOIN run_arch a ON a.run_id = s.run_id
WHERE s.side = 'source' AND s.split = 'train' AND s.metric = 'nc1'
ORDER BY f.dataset, a.arch, s.run_id
