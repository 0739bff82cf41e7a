# Stage 2: planner pre-training on the wiki labels. python pretrain_planner.py config/planner/pretrain.py
dataset = "wiki"
plan_k = 64
plan_context = 8
out_dir = "out-planner/planner"
max_iters = 1000
eval_interval = 250
