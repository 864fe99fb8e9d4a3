"""Training: the math (objective, LARS, schedule, metrics), one task per train mode, the
trainer and its callbacks, the evaluator, and run(config), one --mode of the command."""
