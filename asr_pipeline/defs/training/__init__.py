"""Features to a checkpoint: finetuned_checkpoint, its check, its launcher, and the nightly retraining schedule."""
