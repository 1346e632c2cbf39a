"""Prediction workers: RQ jobs that fit a model on a device's recent readings.

The job manager enqueues work by dotted path (see ``pipeline.queue``); everything
that runs inside a worker process lives here, so that the stream processors never
import model code and never block their event loop on a fit.
"""
