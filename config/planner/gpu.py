# after config/plain.py: the planner experiment's gpu suite (one CUDA GPU), a larger base LM, same recipe as
# small.py. python train.py config/plain.py config/planner/gpu.py
dataset = "wiki"
n_layer = 8
n_head = 8
n_embd = 512
block_size = 256
batch_size = 32
dropout = 0.1  # ~1M training tokens: a model this size overfits without it
learning_rate = 6e-4
warmup_iters = 200
eval_interval = 500
eval_iters = 50
sample_tokens = 0
plan_k = 64
