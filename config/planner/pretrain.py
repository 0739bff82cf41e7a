# Not train.py's: python -m tools.pretrain_planner config/planner/pretrain.py, stage 2, the planner on the wiki labels.
dataset = "wiki"
plan_k = 64
plan_context = 8
out_dir = "out-planner/planner"
max_iters = 1000
eval_interval = 250
