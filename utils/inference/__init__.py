"""Stage 03, inference: trained runs applied to every cached patient, and to new exams.

Reads trained models with their cards and the cache; writes ``predictions/<run>.csv``,
predicted masks and ``results/predictions.csv``. ``python -m utils.inference`` predicts one
new patient from its exams.
"""
