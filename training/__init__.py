"""What trains but is not a method: the run's set-up, data, model, optimizer and step (trainer.py), the device and
processes, checkpoints, the run folder and its report, the settings checks, tuning from a checkpoint or GPT-2, the
loss plot, LoRA, and the planner while sampling. train.py, sample.py and lm.py use it; the techniques never do."""
