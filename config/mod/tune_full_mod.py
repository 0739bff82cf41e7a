# Tuning arm of the mod experiment: full fine-tune with the depth ensemble of the last 3 layers.
# python train.py config/mod/tune_full_mod.py   (after config/mod/pretrain_wiki.py)
out_dir = "out/mod-small/tune_full_mod"
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
learning_rate = 1e-3
mod_tune = "full"
mod_k = 3
