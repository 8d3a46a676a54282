-- Accuracy of each fine-tuning method against the data budget (samples per class; NULL = all)
-- and its trainable parameters, averaged over the pre-training runs of each architecture.
-- Question 3: do Layer FT and SCL FT match full fine-tuning with far fewer trainable parameters?
SELECT b.dataset, a.arch, b.method, b.per_class, count(*) AS runs,
       avg(b.test_acc) AS acc, stddev_pop(b.test_acc) AS acc_std,
       avg(b.trainable_params) AS trainable_params, avg(b.total_params) AS total_params,
       avg(b.trainable_params / b.total_params) AS trainable_frac,
       avg(b.wall_s) AS wall_s
FROM ft_budget b
LEFT JOIN run_arch a ON a.run_id = b.run_id
GROUP BY ALL
ORDER BY b.dataset, a.arch, b.method, b.per_class NULLS LAST
