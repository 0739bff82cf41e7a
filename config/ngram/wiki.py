# after config/plain.py: the n-gram experiment on wiki (tools/experiments/ngram.py), GPT-2 tokens, where the 50k-token
# head dominates the cost.
# python train.py config/plain.py config/ngram/wiki.py config/ngram/compact.py
dataset = "wiki"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
batch_size = 8
max_iters = 250
eval_interval = 25
eval_iters = 10
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 25
ngram_n = 3  # 2 tokens of context
sample_tokens = 0
