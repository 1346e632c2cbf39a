"""An in-process RQ worker for tests, exiting as promptly as the project's workers."""

from __future__ import annotations

from rq import SimpleWorker

from pipeline.prediction.command_channel import PromptExit


class InProcessWorker(PromptExit, SimpleWorker):
    """RQ's SimpleWorker (jobs run in this process) with the short command-channel wait."""
