-- Transferability scores of each model's features (scores rows without a layer) on each
-- downstream dataset, next to the fine-tuned accuracy they should rank (largest budget) and
-- what each side cost: seconds spent scoring vs seconds spent on every fine-tuning trial.
SELECT s.dataset, f.method, s.score, s.part, s.run_id, a.arch,
       avg(s.value) AS value, sum(s.wall_s) AS score_s, f.test_acc AS acc, c.finetune_s
FROM scores s
JOIN ft_best f ON f.run_id = s.run_id AND f.dataset = s.dataset
LEFT JOIN (
    SELECT run_id, dataset, method, sum(wall_s) AS finetune_s FROM finetune GROUP BY ALL
) c ON c.run_id = s.run_id AND c.dataset = s.dataset AND c.method = f.method
LEFT JOIN run_arch a ON a.run_id = s.run_id
WHERE s.layer IS NULL
GROUP BY ALL
ORDER BY s.dataset, f.method, s.score, s.part, s.run_id
