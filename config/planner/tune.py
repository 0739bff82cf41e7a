# after config/plain.py config/planner/small.py --plan_mode=oracle, tuning a run of config/planner/small.py:
# stages 3 and 4 (gpu.py for small.py in both places; 'hard', 'st' and 'soft' also take a pre-trained planner,
# tools/experiments/planner_frozen.py). The base LM is frozen, as the paper freezes its pretrained GPT-2; only the
# codebooks, projections and (in 'st' and 'soft') the planner train.
base = "frozen"
# The authors' recipe (their code: torch Adam, defaults): Adam at 1e-4, constant, no warmup, no weight decay,
# and the checkpoint with the best validation loss is the one kept and scored (best.pt).
learning_rate = 1e-4
decay_lr = False  # a constant rate: warmup_iters and min_lr are not read
weight_decay = 0.0
beta2 = 0.999
keep_best = True
eval_interval = 100
