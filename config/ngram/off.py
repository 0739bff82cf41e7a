# after config/plain.py config/ngram/shakespeare_char.py (or wiki.py): an arm of the n-gram experiment,
# the plain next-token loss (the baseline).
ngram_mode = "off"
label_smoothing = 0.0
