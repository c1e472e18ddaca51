"""make dry-run reports what each stage will do: optimizer steps, global batch, tokens; and warns
about a stage of one step or warmup longer than training, before anything trains."""

from types import SimpleNamespace

from helpers.runs import run_train
from train.pipeline.dry_run import optimizer_steps, plan_warnings


def args(**kw):
    base = dict(per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=-1, num_train_epochs=2, warmup_steps=5)
    return SimpleNamespace(**{**base, **kw})


def test_optimizer_steps_follow_the_trainer():
    assert optimizer_steps(args(), 100, 2) == {"optimizer_steps": 8, "global_batch": 32, "epochs": 2, "warmup_steps": 5}
    assert optimizer_steps(args(max_steps=3), 100, 1)["optimizer_steps"] == 3


def test_one_step_and_long_warmup_are_warned_about():
    plan = optimizer_steps(args(num_train_epochs=1), 20, 1)  # 20 rows, global batch 16: 2 steps, warmup 5
    assert [w.split(":")[1].strip() for w in plan_warnings("dpo", plan, 20)] == ["dpo.args.warmup_steps=5 >= its 2 optimizer steps"]
    one = optimizer_steps(args(num_train_epochs=1, warmup_steps=0.1), 10, 1)
    assert plan_warnings("sft", one, 10)[0].startswith("warning: sft runs 1 optimizer step(s)")
    assert plan_warnings("sft", optimizer_steps(args(), 1000, 1), 1000) == []


def test_dry_run_prints_steps_batch_and_tokens(tmp_path):
    proc = run_train("debug=fast", "dry_run=true", "dpo.args.warmup_steps=100", output_root=tmp_path)
    assert "plan: dpo: 16 optimizer steps of 32 pairs on 1 process(es)," in proc.stdout
    assert "warning: dpo.args.warmup_steps=100 >= its 16 optimizer steps" in proc.stdout
    assert not (tmp_path / "sft").exists()  # nothing trained
