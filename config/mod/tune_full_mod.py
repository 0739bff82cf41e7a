# after config/plain.py config/mod/tune.py, tuning a run of config/mod/pretrain_wiki.py: an arm of the mod
# experiment, full fine-tune with the depth ensemble of the last 2 layers.
# python train.py config/plain.py config/mod/tune.py config/mod/tune_full_mod.py
out_dir = "out/mod-small/tune_full_mod"
learning_rate = 3e-3  # chosen by tools/experiments/mod.py's rule from one grid (results/mod.md), as full's alone
min_lr = 3e-4
base = "train"
mod_k = 2  # a quarter of the 8 layers
