"""Runtime services: the process group, preemption signals, fault injection, W&B, SLURM node fan-out."""
