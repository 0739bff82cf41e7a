# after config/plain.py config/ngram/shakespeare_char.py (or wiki.py): an arm of the n-gram experiment,
# AllNTs, the exact n-gram distribution of each position's context, gathered per batch.
ngram_mode = "all"
ngram_alpha = 0.5
