# after config/plain.py config/mod/tune.py, tuning a run of config/mod/pretrain_wiki.py: an arm of the mod
# experiment, base frozen, only the router and the new norm train.
# python train.py config/plain.py config/mod/tune.py config/mod/tune_mod_only.py
out_dir = "out/mod-small/tune_mod_only"
learning_rate = 0.09  # chosen by tools/experiments/mod.py's rule, past the grid's top (results/mod.md); 0.27 diverges
min_lr = 0.009
base = "frozen"
mod_k = 2  # a quarter of the 8 layers
# The final layer's norm (ln_f) trains too, as the other late layers' norms do: frozen, the final layer, the
# distillation's teacher, could not adapt to the new corpus at all. 'ln_f alone' in results/mod.md is its control.
train_ln_f = True
