"""The SFT, DPO and reward model trainers as the pipeline runs them; the benchmark and the GPU check build theirs here too,
so what they measure is what a run trains with."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch
from trl import RewardTrainer, SFTTrainer

from train import seams
from train.config.choices import Reference, Stage
from train.config.schema import DPOStageConfig
from train.console.progress import ConsoleLogCallback
from train.models.adapters import lora_config
from train.models.loading import load_model
from train.trainer import beta
from train.trainer.dpo import ProjectDPOTrainer
from train.trainer.start_plan import StartPlan


def build_sft_trainer(plan: StartPlan, model_path: str, data, tokenizer, output_dir: Path,
                      extra: dict[str, Any] | None = None) -> SFTTrainer:
    """`plan`: what the start check built (train/pipeline/checks.py start_plan): the config and the checked
    settings. `extra`: TrainingArguments set by the caller (process group, report_to, the benchmark's max_steps)."""
    cfg = plan.config
    args = plan.args[Stage.sft].build(output_dir, extra)
    # sft.lora trains adapters through TRL's peft_config, as dpo.reference=lora does; run_sft still publishes
    # full (merged) weights, because DPO loads its start and its reference by path.
    peft_config = lora_config(cfg.sft.lora) if cfg.sft.lora.enabled else None
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=data.sft, processing_class=tokenizer,
                         peft_config=peft_config)
    ConsoleLogCallback.attach(trainer, "sft")  # a line of numbers per logging step, not a dict of strings
    quiet_model_card(trainer)
    return trainer


def build_dpo_trainer(plan: StartPlan, model_path: str, data, tokenizer, output_dir: Path,
                      extra: dict[str, Any] | None = None, reference_path: str | None = None) -> ProjectDPOTrainer:
    """`reference_path`: a reference other than the start (on-policy rounds: start from the previous round's policy,
    keep the SFT model as reference); None: TRL loads the reference from `model_path`."""
    cfg = plan.config
    args = plan.args[Stage.dpo].build(output_dir, extra)
    # Loaded after the DPOConfig, so under ZeRO-3 from_pretrained partitions it as TRL's own reference would be.
    ref_model = load_model(cfg.model, reference_path) if reference_path not in (None, model_path) else None
    trainer = ProjectDPOTrainer(
        model=model_path,  # TRL loads the reference from the same path: the SFT model, never a checkpoint
        ref_model=ref_model,
        args=args,
        train_dataset=data.train_pairs,
        eval_dataset=data.test_pairs,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.dpo.lora) if cfg.dpo.reference == Reference.lora else None,
        beta_schedule=plan.beta_schedule,
        adaptive_beta=beta.adaptive(cfg.beta, cfg.seed),
        max_bad_steps=cfg.faults.max_bad_steps,
        reference_cache_dir=Path(cfg.output_root).resolve() / "ref_cache",
        batching=cfg.dpo.batching,
        resolved_layout=plan.layout,
    )
    ConsoleLogCallback.attach(trainer, "dpo")
    quiet_model_card(trainer)
    return trainer



def build_reward_trainer(plan: StartPlan, model_path: str, data, tokenizer, output_dir: Path,
                         extra: dict[str, Any] | None = None) -> RewardTrainer:
    """TRL loads `model_path` (a causal LM: the SFT or base model) as AutoModelForSequenceClassification with one
    label, a new score head on top, and sets the pad token in its config (a classifier reads each row's last token
    by it). Full fine-tuning: the model saved is a plain classifier directory, as judge=reward_model loads one."""
    args = plan.args[Stage.reward].build(output_dir, extra)
    trainer = RewardTrainer(model=model_path, args=args, train_dataset=data.train_pairs, eval_dataset=data.test_pairs,
                            processing_class=tokenizer)
    ConsoleLogCallback.attach(trainer, "reward")
    quiet_model_card(trainer)
    return trainer

def quiet_model_card(trainer) -> None:
    """TRL writes a model card at every checkpoint save and asks W&B for the run's URL, which an offline run does
    not have (a warning line each time): the card is written as before, without the URL."""
    create_model_card = trainer.create_model_card

    def quiet(*args, **kwargs):
        with seams.offline_wandb_run_hidden():
            return create_model_card(*args, **kwargs)

    trainer.create_model_card = quiet


def reference_forward(dpo: DPOStageConfig) -> bool:
    """Whether a DPO step also runs the reference forward (not when its log-probs were precomputed)."""
    return dpo.reference != Reference.precomputed


def release(trainer) -> None:
    """Lets go of a finished trainer's models, optimizer and DeepSpeed engines and empties the GPU cache, so the
    stage after it starts from free memory (evaluation loads policy and reference whole on every rank; without
    this the ZeRO engine, its optimizer partitions and TRL's reference engine stayed referenced until the process
    ended). accelerate's free_memory destroys the engine it prepared; the trainer's own attributes go here."""
    seams.release_precompute_engine(trainer)
    trainer.accelerator.free_memory()
    for owner in (trainer, trainer.callback_handler):  # the callback handler holds model, optimizer, scheduler too
        for name in ("model", "model_wrapped", "ref_model", "optimizer", "lr_scheduler", "deepspeed"):
            if hasattr(owner, name):
                setattr(owner, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
