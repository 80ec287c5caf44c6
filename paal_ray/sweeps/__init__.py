"""Sweeps: many active-learning runs from one spec (strategies x budgets x seeds x settings) on Ray
Tune, and the report that compares them (the paper's tables and learning-curve figures).

``spec`` reads and expands the sweep file, ``tuner`` runs the trials on Ray Tune (each trial is an
ordinary run folder, so `paal status`, `paal serve` and `--resume` work on it), ``report`` reads
the run folders back and writes the comparison.
"""
