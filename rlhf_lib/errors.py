"""Errors the trainers raise, shared so callers catch one type whichever trainer ran."""


class NonFiniteError(FloatingPointError):
    """A NaN or inf appeared in scores, losses, advantages or gradients; the message names the step."""


class RewardUnavailable(RuntimeError):
    """A reward source has no scores for a batch (people did not rate it in time, a scoring service is down).

    `skip` True: the PPO trainer skips the batch and counts it; False: it saves a checkpoint of the steps done,
    taken as if the batch had not been sampled, and re-raises, so a rerun resumes by sampling that same batch.
    """

    def __init__(self, message: str, skip: bool) -> None:
        super().__init__(message)
        self.skip = skip
