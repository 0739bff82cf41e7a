# Arm: AllNTs, the exact n-gram distribution of each position's context, gathered per batch.
ngram_mode = "all"
ngram_alpha = 0.5
