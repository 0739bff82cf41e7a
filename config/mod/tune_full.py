# after config/plain.py config/mod/tune.py, tuning a run of config/mod/pretrain_wiki.py: an arm of the mod
# experiment, the plain full fine-tune, every weight trains.
# python train.py config/plain.py config/mod/tune.py config/mod/tune_full.py
out_dir = "out/mod-small/tune_full"
learning_rate = 3e-3  # chosen by tools/experiments/mod.py's rule from one grid (results/mod.md)
min_lr = 3e-4
base = "train"
