# Tuning arm of the mod experiment: LoRA on a frozen base, the parameter-efficient baseline.
# Adapters take a larger step size than full fine-tuning.
# python train.py config/mod/tune_lora.py   (after config/mod/pretrain_wiki.py)
out_dir = "out/mod-small/tune_lora"
init_from = "out/mod-small/pretrain_wiki/ckpt.pt"
dataset = "sotu"
block_size = 64
batch_size = 8
max_iters = 200
warmup_iters = 20
min_lr = 1e-4
eval_interval = 40
eval_iters = 10
sample_tokens = 0
learning_rate = 3e-3
mod_tune = "lora"
