"""Typed settings of the reward model stage (stage=reward, train/pipeline/reward.py); values in conf/reward/default.yaml.

Kept apart from schema.py, which stays under the module size limit; nothing here imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING


@dataclass
class RewardStageConfig:
    enabled: bool = MISSING  # false: stage=reward is refused (nothing to train)
    args: dict[str, Any] = MISSING  # RewardConfig keys, checked by TRL (train/config/trainer_args.py)
