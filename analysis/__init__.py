"""Pure analysis of eval results: token statistics against the base model, the baseline cache, metrics and plots.
Functions here return metrics and write files; logging them (MLflow) is the caller's job."""
