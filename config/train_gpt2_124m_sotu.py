# GPT-2 small's shape (124M parameters) on the State of the Union corpus (~2.2M training tokens), for one CUDA GPU.
# 131k tokens per step is ~17 steps per pass over the corpus, so 300 steps are ~18 passes: expect the validation
# loss to turn up before the end (dropout slows the memorising). Not yet run: no GPU was at hand.
# python train.py config/train_gpt2_124m_sotu.py
out_dir = "out-gpt2-sotu"
dataset = "sotu"
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
batch_size = 16
gradient_accumulation_steps = 8
max_iters = 300
eval_interval = 25
eval_iters = 20
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 50
weight_decay = 0.1
beta2 = 0.95
dropout = 0.1
ngram_n = 3  # 2 BPE tokens of context: the default 5 is for characters, and GPT-2's 50k ids allow at most 4
