# after config/plain.py config/mod/tune.py, tuning a run of config/mod/pretrain_wiki.py: an arm of the mod
# experiment, the plain full fine-tune, every weight trains.
# python train.py config/plain.py config/mod/tune.py config/mod/tune_full.py
out_dir = "out/mod-small/tune_full"
learning_rate = 3e-4  # at 1e-3 the full + MoD router left the final layer of the earlier 4-layer base
base = "train"
