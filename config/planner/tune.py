# Stages 3 and 4 (after small.py or gpu.py): the base LM is frozen, as the paper freezes its pretrained GPT-2;
# only the codebooks, projections and (in 'st' and 'soft') the planner train.
base = "frozen"
# The authors' recipe (their code: torch Adam, defaults): Adam at 1e-4, constant, no warmup, no weight decay,
# and the checkpoint with the best validation loss is the one kept and scored (best.pt).
learning_rate = 1e-4
decay_lr = False  # a constant rate: warmup_iters and min_lr are not read
weight_decay = 0.0
beta2 = 0.999
keep_best = True
eval_interval = 100
