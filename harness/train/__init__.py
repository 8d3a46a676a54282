"""Pre-training: the DDP training loop with checkpoints and requeue (``pretrain``), the losses
by name (``losses``) and learning-rate schedules (``schedule``)."""
