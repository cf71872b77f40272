"""Hyperparameter optimisation: Optuna studies (TPE) and Population Based Training."""
