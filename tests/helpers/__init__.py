"""Test helpers: running the project (runs), reading W&B offline files (wandb_file), the SLURM cluster and
Label Studio fixtures."""
