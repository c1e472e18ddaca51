"""Pipeline stages in order: checks -> data -> SFT -> DPO -> evaluation -> results.json (run.py)."""
