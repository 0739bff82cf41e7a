# after config/plain.py config/ngram/shakespeare_char.py (or wiki.py): an arm of the n-gram experiment,
# classic label smoothing, the uniform soft target the n-gram target replaces.
ngram_mode = "off"
label_smoothing = 0.1
