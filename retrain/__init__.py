"""Retraining: dataset snapshots, fine-tune jobs (local LoRA or a hosted API), the scheduler,
evaluation gates and the model registry with promotion and rollback."""
