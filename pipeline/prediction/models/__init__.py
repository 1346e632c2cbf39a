"""Forecasting models: pure functions from a cleaned series to a forecast.

A model module knows nothing of Redis, RQ or settings, so it can be unit
tested and benchmarked on synthetic series. It is deployed by reference: the
``models`` setting maps a model name to the dotted path of a job function
(``pipeline.prediction.jobs``) that loads readings, calls the model and stores
what it returns. Adding a model is one module here, one job function with its
``JOB_SPECS`` entry (so that ``pipeline backtest`` and the ``auto`` model reach
it) and one settings line (``models``, and ``selection_candidates`` to have it
compete for serving devices).
"""
