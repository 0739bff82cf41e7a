# The default run spelled out: nanoGPT's CPU configuration, a ~0.8M-parameter character model.
# python train.py config/train_shakespeare_char.py
out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
batch_size = 12
max_iters = 2000
eval_interval = 250
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
dropout = 0.0
