# after config/plain.py, tuning a run of config/mod/pretrain_wiki.py: what every tuning arm of the mod experiment
# shares, tuning the wiki-pretrained GPT on sotu, same steps and seed.
# python train.py config/plain.py config/mod/tune.py config/mod/tune_full.py
init_from = "out/mod-small/pretrain_wiki/ckpt.pt"
dataset = "sotu"
block_size = 64
batch_size = 8
max_iters = 200
warmup_iters = 20
min_lr = 1e-4
eval_interval = 50
eval_iters = 5  # the curves only; the table scores every arm on 120k validation tokens (tools/experiments/mod.py)
sample_tokens = 0
