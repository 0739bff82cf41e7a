"""What a user runs but need not read to learn the methods, each as `python -m tools.NAME` from the repository:
bench (speed and memory, and the GPU check), explain (a page of each technique at work), export_gpt2, pretrain_planner,
and experiments.run (the paired comparisons behind results/). Nothing on the reading path imports this folder."""
