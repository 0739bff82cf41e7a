# Tuning arm of the mod experiment: full fine-tune with the depth ensemble of the last 3 layers.
# python train.py config/plain.py config/mod/tune.py config/mod/tune_full_mod.py   (after config/mod/pretrain_wiki.py)
out_dir = "out/mod-small/tune_full_mod"
learning_rate = 1e-3
base = "train"
mod_k = 3
