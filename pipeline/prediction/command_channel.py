"""RQ's command channel, read with a short wait so that a worker exits at once.

RQ listens for commands (stop, kill the work horse) on a Redis pub/sub channel,
in a thread that waits up to 60 s per read. At exit RQ gives that thread one
second and then closes the subscription, and closing waits for the read in
progress: a worker that has finished (a burst run, or a warm shutdown after
SIGTERM) then often hangs for up to a minute before it exits (with RQ 2.12 and
redis-py 8.2: 60 s in 2 of 15 burst runs of a one-job queue), longer than
Kubernetes' default grace period. Reading with a one-second wait bounds that.
"""

from __future__ import annotations

READ_WAIT_SECONDS = 1.0


class PromptExit:
    """Mixin for an RQ worker class: its command-channel thread wakes every second."""

    def subscribe(self) -> None:
        """RQ's ``Worker.subscribe``, with the thread's read wait shortened."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=READ_WAIT_SECONDS,
            daemon=True,
            exception_handler=self._pubsub_exception_handler,
        )
