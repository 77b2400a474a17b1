"""The driver's hold on one seed's LoRA learner actor: its training loop, kept running across actor restarts.

Ray restarts a dead learner actor (``learner.max_restarts``) by constructing it again, and the learner resumes from
its checkpoint (``learner.learner.Learner._resume``: weights, optimizer, step, version; entries it had read but not
checkpointed are still pending in the stream and are read again). What Ray cannot do is re-issue the driver's
``run`` call that was in flight when the actor died: the supervisor notices the failed call (on every version
query of the scheduler's admission control, and when the seed ends) and starts the loop again. Past
``max_restarts`` deaths the job ends with a one-line error instead of a traceback.

    sup = LearnerSupervisor(handle, max_restarts=3)   # starts the training loop
    version = sup.version()                           # admission control; revives a dead learner's loop
    state = sup.stop()                                # drain, checkpoint, return its state (with "restarts")
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)
CALL_TIMEOUT_S = 300.0  # a restarted learner loads its model and checkpoint before it answers


class LearnerDied(RuntimeError):
    """The learner actor died more often than ``learner.max_restarts`` allows."""


class LearnerSupervisor:
    def __init__(self, handle: Any, max_restarts: int) -> None:
        self.handle, self.max_restarts, self.restarts = handle, max_restarts, 0
        self.loop = handle.run.remote()

    def version(self) -> int:
        """The learner's published adapter version (reviving its loop first if the actor died)."""
        return int(self._call(lambda: self.handle.get_version.remote()))

    def stop(self) -> dict[str, Any]:
        """Drain: stop the loop, train on what the buffer still holds (partial batch), checkpoint, return the state."""
        self._call(lambda: self.handle.stop.remote())
        self._check_loop(wait=True)
        state = dict(self._call(lambda: self.handle.run.remote(burst=True)))
        state["restarts"] = self.restarts
        return state

    def _call(self, submit: Any) -> Any:
        import ray

        while True:
            self._check_loop()
            try:
                return ray.get(submit(), timeout=CALL_TIMEOUT_S)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                self._revive(e)

    def _check_loop(self, wait: bool = False) -> None:
        """If the training loop's call ended (only ``stop`` ends it normally), find out how; restart it after a death."""
        import ray

        ready, _ = ray.wait([self.loop], timeout=CALL_TIMEOUT_S if wait else 0)
        if not ready:
            return
        try:
            ray.get(self.loop)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            self._revive(e)
            if wait:  # draining: the revived loop must end too
                self._call(lambda: self.handle.stop.remote())
                self._check_loop(wait=True)

    def _revive(self, err: Exception) -> None:
        import ray

        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise LearnerDied(f"the LoRA learner died {self.restarts} times (learner.max_restarts = "
                              f"{self.max_restarts}); last error: {type(err).__name__}: {str(err)[:300]}") from None
        log.warning("the LoRA learner died (%s); Ray restarts it from its checkpoint (restart %d of at most %d)",
                    type(err).__name__, self.restarts, self.max_restarts)
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while True:  # calls to a restarting actor fail at once: ask until the new one has resumed and answers
            try:
                ray.get(self.handle.state.remote(), timeout=CALL_TIMEOUT_S)
                break
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise LearnerDied(f"the LoRA learner did not come back within {CALL_TIMEOUT_S:.0f} s") from None
                time.sleep(0.5)
            except ray.exceptions.RayActorError as e:  # gone for good (no restarts left in Ray)
                raise LearnerDied(f"the LoRA learner died and was not restarted: {str(e)[:300]}") from None
        self.loop = self.handle.run.remote()
