# after config/plain.py config/mod/tune.py, tuning a run of config/mod/pretrain_wiki.py: an arm of the mod
# experiment, LoRA on a frozen base, the parameter-efficient baseline.
# Adapters take a larger step size than full fine-tuning.
# python train.py config/plain.py config/mod/tune.py config/mod/tune_lora.py
out_dir = "out/mod-small/tune_lora"
learning_rate = 1e-2  # chosen by tools/experiments/mod.py's rule from one grid (results/mod.md)
min_lr = 1e-3
base = "lora"
