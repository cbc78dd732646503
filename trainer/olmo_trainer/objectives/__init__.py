"""Training objectives: what a micro-batch's loss is. `lm` serves pretraining and annealing."""
