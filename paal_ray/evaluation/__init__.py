"""Judging a trained model on labelled slices nobody selected from: a run's held-out test set
(``testset.py``: chosen at init, evaluated after the final phase into RUN/test.json, whose format
is documented there), or any labelled pool (``paal evaluate``). Predictions come from ``predict.py``
(a Ray task placed like training), metrics from MONAI (``metrics.py``), tables from ``report.py``.
"""
