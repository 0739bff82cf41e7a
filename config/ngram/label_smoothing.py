# Arm: classic label smoothing, the uniform soft target the n-gram target replaces.
ngram_mode = "off"
label_smoothing = 0.1
