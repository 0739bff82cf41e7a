# after config/plain.py config/mod/tune.py, tuning a run of config/mod/pretrain_wiki.py: an arm of the mod
# experiment, LoRA plus the depth ensemble of the last 2 layers, base frozen.
# python train.py config/plain.py config/mod/tune.py config/mod/tune_lora_mod.py
out_dir = "out/mod-small/tune_lora_mod"
learning_rate = 1e-2  # chosen by tools/experiments/mod.py's rule from one grid (results/mod.md), as LoRA's alone
min_lr = 1e-3
base = "lora"
mod_k = 2  # a quarter of the 8 layers
train_ln_f = True  # every late layer's norm trains, the final one's too (config/mod/tune_mod_only.py)
