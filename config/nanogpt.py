# nanoGPT's train.py defaults where this repository's differ, and every technique off (as config/plain.py): put it
# before one of nanoGPT's config files, which count on those defaults, and they mean here what they mean there:
# python train.py config/nanogpt.py ../nanoGPT/config/train_shakespeare_char.py --dataset=data/shakespeare_char
# Not set: nanoGPT's default dataset, openwebtext (name its folder); device, dtype and compile, whose 'auto' and None
# pick what nanoGPT's defaults pick on a GPU.
ngram_mode = "off"
mod_k = 0
plan_mode = "none"
plan_lambda = 0.0
eval_interval = 2000
log_interval = 1
eval_iters = 200
wandb_project = "owt"
wandb_run_name = "gpt2"
gradient_accumulation_steps = 40
block_size = 1024
n_layer = 12
n_head = 12
n_embd = 768
learning_rate = 6e-4
max_iters = 600000
beta2 = 0.95
warmup_iters = 2000
lr_decay_iters = 600000
min_lr = 6e-5
