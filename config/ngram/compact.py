# after config/plain.py config/ngram/shakespeare_char.py (or wiki.py): an arm of the n-gram experiment,
# CoCoNTs, the compact unbiased target (top r exact, the rest on one tail token), built once and cached.
ngram_mode = "compact"
ngram_r = 8
ngram_alpha = 0.5
