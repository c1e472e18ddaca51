"""Every start-up check of a composed config, each run by the layer that owns the registry it checks, and what
they built for the run (train/trainer/start_plan.py): once per process and config (start_plan)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from train import data
from train.config.validate import validate
from train.core.errors import ConfigError
from train.memory.gate import check_memory_plan
from train.models import adapters, judges
from train.models.loading import check_attention, check_model_directory, resolve_chat_template
from train.runtime.hub import check_push_to_hub
from train.runtime.launcher import check_launcher_settings
from train.sweep import recommend
from train.trainer import beta, layouts
from train.trainer.start_plan import StartPlan


def check_config(cfg: DictConfig) -> StartPlan:
    """Raises ConfigError (one line) for anything the run would fail on later; writes nothing. Returns what the
    checks built that the run uses."""
    check_launcher_settings()
    beta.check(cfg.beta, cfg.dpo.args)
    data.check_config(cfg)
    judges.check_config(cfg)
    stage_args = validate(cfg)
    check_attention(cfg.model)
    check_model_directory(cfg.model)
    layout = layouts.check(cfg)
    recommend.check(cfg.search.metric, cfg.report.kl_budget)
    adapters.check_lora_settings(cfg)
    if cfg.model.chat_template is not None:
        resolve_chat_template(cfg.model.chat_template)
    check_push_to_hub(cfg)
    check_memory_plan(cfg)  # on GPUs only, before any weights load
    plan = StartPlan(stage_args, beta.schedule(cfg.beta), layout, cfg)
    check_resolves(plan)
    return plan


def check_resolves(plan: StartPlan) -> None:
    """Converts the plan's config now (plan.config, plan.resolved), or refuses one that cannot resolve. Outside
    Hydra's job a ${hydra:...} setting cannot resolve yet: that config is converted, and checked, inside the job."""
    try:
        plan.config, plan.resolved
    except OmegaConfBaseException as err:  # e.g. an interpolation that names a key the config lacks
        if not HydraConfig.initialized() and "${hydra:" in OmegaConf.to_yaml(plan.checked):
            return
        raise ConfigError(f"the config does not resolve: {str(err).splitlines()[0]}; fix or remove that "
                          "setting") from err


# The configs this process has checked, by content. The entry point checks every combination of a multirun
# before Hydra starts (train/main.py precheck); each job's run() then finds its combination here. A process that
# did not check (a SLURM task, a worker started by the launcher) checks before it writes anything.
CHECKED: dict[str, StartPlan] = {}


def start_plan(cfg: DictConfig) -> StartPlan:
    """check_config's plan for `cfg`, checked once per process (a refusal is not kept: it is raised again)."""
    key = content_key(cfg)
    if key is None:
        return check_config(cfg)
    if key not in CHECKED:
        CHECKED[key] = check_config(cfg)
    return CHECKED[key]


def content_key(cfg: DictConfig) -> str | None:
    """The config as resolved YAML; None when it does not resolve outside Hydra's job (never cached then)."""
    try:
        return OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True)
    except (OmegaConfBaseException, ValueError):  # an interpolation only Hydra's job resolves: not cached
        return None
