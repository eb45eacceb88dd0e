"""The search: Ray Tune runs Optuna-sampled students; Pareto bookkeeping and schedulers."""
