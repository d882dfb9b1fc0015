"""The search: Optuna samplers and the searcher that tells PRUNED (`samplers`, `searcher`),
the trial schedulers with MO-ASHA (`schedulers`, `moasha`) and the epoch budget
(`epoch_budget`)."""
