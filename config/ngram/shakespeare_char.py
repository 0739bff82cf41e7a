# after config/plain.py: the n-gram experiment on shakespeare_char (tools/experiments/ngram.py), a small character
# model, then one arm file.
# python train.py config/plain.py config/ngram/shakespeare_char.py config/ngram/compact.py
dataset = "shakespeare_char"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
batch_size = 12
max_iters = 1000
eval_interval = 50
eval_iters = 20
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
ngram_n = 5  # 4 characters of context: about 30 occurrences per context in the 1M-character train split
sample_tokens = 0
