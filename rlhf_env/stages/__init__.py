"""The stages that build the shipped assets, in pipeline order: ``pretrain`` (base models on web text),
``sft`` (supervised fine-tuning on demonstrations), ``comparisons`` (SFT samples ranked by the labelers: the
reward model's data), ``reward_model`` (training the RMs) and ``build_assets`` (all of them from one seed)."""
