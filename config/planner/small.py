# after config/plain.py: the planner experiment's small suite (CPU), the base LM and the model shape every arm
# shares.
# python train.py config/plain.py config/planner/small.py --out_dir=out-planner/base --max_iters=800
dataset = "wiki"
n_layer = 4  # the plan enters the top n_layer - 2 = 2 layers
n_head = 4
n_embd = 128
block_size = 64
batch_size = 8
learning_rate = 1e-3
warmup_iters = 50
eval_interval = 200
eval_iters = 20
sample_tokens = 0
plan_k = 64  # ~32k train sentences in wiki
