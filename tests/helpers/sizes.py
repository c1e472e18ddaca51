"""The smallest run sizes the tests use: the whole pipeline on them takes seconds in-process."""

TINY = [
    "debug=fast",
    "wandb.enabled=false",
    # Smallest data that still fills a batch in every stage.
    "data.synthetic.num_sft=64", "data.synthetic.num_pairs=64", "data.synthetic.num_test_pairs=8",
    "data.synthetic.num_eval_prompts=4", "eval.num_prompts=4", "eval.max_new_tokens=4",
    "+sft.args.max_steps=2", "+dpo.args.max_steps=2", "sft.args.per_device_train_batch_size=8",
    "dpo.args.per_device_train_batch_size=8", "dpo.args.per_device_eval_batch_size=8",
    "sft.args.max_length=64", "dpo.args.max_length=64", "sft.args.logging_steps=1", "dpo.args.logging_steps=1",
    # A smaller tiny model: the BPE fit and the steps take a fraction of a second.
    "model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64",
    "model.tiny.num_hidden_layers=1", "model.tiny.num_attention_heads=2", "model.tiny.max_position_embeddings=128",
]
