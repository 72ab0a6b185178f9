"""Training, fine-tuning and distillation: data, synthetic volumes, click simulation, losses, the trainer, DDP."""
