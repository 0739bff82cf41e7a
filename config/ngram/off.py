# Arm: the plain next-token loss (the baseline).
ngram_mode = "off"
label_smoothing = 0.0
