-- Downstream NC1 (penultimate layer, downstream train split) against the accuracy of every
-- fine-tuning method at its largest budget, one point per model, across models and architectures.
-- Question 2: do features that collapse more on the downstream data transfer better?
SELECT d.dataset, f.method, a.arch, d.run_id,
       d.value AS down_nc1, f.test_acc AS acc, f.per_class
FROM nc_pen d
JOIN ft_best f ON f.run_id = d.run_id AND f.dataset = d.dataset
LEFT JOIN run_arch a ON a.run_id = d.run_id
WHERE d.side = 'down' AND d.split = 'train' AND d.metric = 'nc1'
ORDER BY d.dataset, f.method, a.arch, d.run_id
