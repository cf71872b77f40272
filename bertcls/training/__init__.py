"""Training: the loop and its state, the convex linear-head fit, early stopping, callbacks, resume, and the train
workflow (prepare, set up, score and save)."""
