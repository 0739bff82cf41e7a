# Arm: CoCoNTs, the compact unbiased target (top r exact, the rest on one tail token), built once and cached.
ngram_mode = "compact"
ngram_r = 8
ngram_alpha = 0.5
