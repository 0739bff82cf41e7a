# Tuning arm of the mod experiment: base frozen, only the router and the 2 new norms train.
# python train.py config/mod/tune_mod_only.py   (after config/mod/pretrain_wiki.py)
out_dir = "out/mod-small/tune_mod_only"
init_from = "out/mod-small/pretrain_wiki/ckpt.pt"
dataset = "sotu"
block_size = 64
batch_size = 8
max_iters = 200
warmup_iters = 20
min_lr = 1e-4
eval_interval = 40
eval_iters = 10
sample_tokens = 0
learning_rate = 3e-3
mod_tune = "mod_only"
mod_k = 3
