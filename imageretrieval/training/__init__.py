"""Training: classifier fine-tuning, metric learning (end to end or on cached trunk features), BN adaptation."""
