# Stages 3 and 4 with the LM trained too (after small.py or gpu.py): the base LM keeps learning at its final
# learning rate's scale while the adapters and (in 'st' and 'soft') the planner learn to use the plan with it.
base = "train"
learning_rate = 3e-4
warmup_iters = 20
min_lr = 1e-4
eval_interval = 100
