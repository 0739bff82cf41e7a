# after config/plain.py: the base model the mod experiment tunes, a small GPT pretrained on wiki (GPT-2 BPE).
# python train.py config/plain.py config/mod/pretrain_wiki.py
out_dir = "out/mod-small/pretrain_wiki"
dataset = "wiki"
n_layer = 8  # the ensemble takes the last 2: late layers, whose predictions are already near the final one's
n_head = 4
n_embd = 128
block_size = 64
batch_size = 8  # the 50k-vocabulary head dominates the step on a CPU
max_iters = 600
learning_rate = 1e-3
warmup_iters = 50
min_lr = 1e-4
eval_interval = 150
eval_iters = 10
sample_tokens = 0
