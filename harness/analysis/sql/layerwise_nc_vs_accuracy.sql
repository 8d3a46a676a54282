-- Layer-wise: downstream NC1 of every measured layer of a model, and the accuracy of fine-tuning
-- that layer alone (method `layer`) or with its skip connection to the classifier (`scl`) at the
-- largest budget. Layers without a fine-tuning result have a NULL method and accuracy.
SELECT d.dataset, a.arch, d.run_id, d.layer, d.layer_index, d.depth_frac,
       d.value AS down_nc1, f.method, f.test_acc AS acc
FROM nc_named d
LEFT JOIN ft_best_layer f ON f.run_id = d.run_id AND f.dataset = d.dataset AND f.layer = d.layer
LEFT JOIN run_arch a ON a.run_id = d.run_id
WHERE d.side = 'down' AND d.split = 'train' AND d.metric = 'nc1'
ORDER BY d.dataset, a.arch, d.run_id, d.layer_index, f.method
