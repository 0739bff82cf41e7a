# A small GPT-2-tokenized model on the Wikipedia lead sections (~0.93M training tokens), sized for a CPU.
# The 50k-token head dominates the cost at this width.
# python train.py config/train_wiki.py                    (all three techniques, as the defaults)
# python train.py config/plain.py config/train_wiki.py   (the plain GPT)
out_dir = "out-wiki"
dataset = "wiki"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 8
max_iters = 1000
eval_interval = 100
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 50
dropout = 0.0
ngram_n = 3  # the n-gram targets' context: 2 BPE tokens (GPT-2's 50k ids allow at most n = 4)
