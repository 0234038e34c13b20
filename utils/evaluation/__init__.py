"""Stage 04, evaluation: AUCs with CIs, DeLong tests, Dice/HD95, baselines, figures, report.

Reads ``results/predictions.csv``, predicted masks, the cache (for reference masks) and the
manifest; writes ``results/*.csv``, ``results/metrics.json``, figures and README's table
(``python -m utils.evaluation.report``).
"""
