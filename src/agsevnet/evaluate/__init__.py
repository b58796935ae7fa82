"""Evaluation: BraTS metrics per case (:mod:`~agsevnet.evaluate.metrics`), matching predictions to ground
truths (:mod:`~agsevnet.evaluate.matching`), reading and scoring files (:mod:`~agsevnet.evaluate.runner`) and
the summaries and output files (:mod:`~agsevnet.evaluate.summary`), behind ``agsevnet evaluate``."""
