"""The trainer layer: ProjectDPOTrainer, its builders, checkpoints, the reference cache, throughput, beta schedules."""
