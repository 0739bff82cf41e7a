# after config/plain.py config/planner/small.py --plan_mode=oracle, tuning a run of config/planner/small.py:
# stages 3 and 4 with the LM trained too (gpu.py for small.py in both places; 'hard', 'st' and 'soft' also take a
# pre-trained planner). The base LM keeps learning while the adapters and (in 'st' and 'soft') the planner learn
# to use the plan with it.
base = "train"
# The authors' recipe, which they use for full fine-tuning too: Adam at 1e-4, constant, no warmup, no weight decay,
# the checkpoint with the best validation loss kept and scored (best.pt).
learning_rate = 1e-4
decay_lr = False  # a constant rate: warmup_iters and min_lr are not read
weight_decay = 0.0
beta2 = 0.999
keep_best = True
eval_interval = 100
