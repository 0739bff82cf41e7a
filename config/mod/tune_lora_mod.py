# after config/plain.py config/mod/tune.py, tuning a run of config/mod/pretrain_wiki.py: an arm of the mod
# experiment, LoRA plus the depth ensemble of the last 2 layers, base frozen.
# python train.py config/plain.py config/mod/tune.py config/mod/tune_lora_mod.py
out_dir = "out/mod-small/tune_lora_mod"
learning_rate = 3e-3
base = "lora"
mod_k = 2  # a quarter of the 8 layers
