"""Pipeline stages in order: checks -> data -> SFT -> DPO -> evaluation -> results.json (run.py).

Only the stages and their orchestration live here. On-policy generation and labelling: the loop is rounds.py and
answers.py; sampling and generation are models/generation.py, the labelers models/labelers.py. Console text is in
train/console/, the memory plan in train/memory/, the sweep report in train/sweep/.
"""
