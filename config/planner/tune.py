# Stages 3 and 4 (after small.py or gpu.py): the base LM is frozen, as the paper freezes its pretrained GPT-2;
# only the codebooks, projections and (in 'st' and 'soft') the planner train.
base = "frozen"
learning_rate = 1e-3
warmup_iters = 20
min_lr = 1e-4
eval_interval = 100
