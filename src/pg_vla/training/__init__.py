"""Training: optimizers and schedules, weight averaging, checkpoints, the trainer."""
