# The plain GPT: every technique off. train.py's defaults switch techniques on for the main job; start any
# comparison's baseline (and any run that wants nothing but the GPT) from this file.
# python train.py config/plain.py
ngram_mode = "off"
mod_k = 0
plan_mode = "none"
plan_lambda = 0.0
