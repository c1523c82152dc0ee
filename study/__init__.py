"""Studies: one continued-pretraining run per domain under a parent MLflow run, then the analysis across domains."""
