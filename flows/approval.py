"""A person's approval before a candidate becomes champion: the flow run pauses with Prefect's own mechanism
(`pause_flow_run(wait_for_input=...)`) and shows the evaluation summary; the answer comes from the Prefect UI
("Resume") or its API (`prefect.flow_runs.resume_flow_run(id, run_input={...})`).
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from tasks import registry

POLL_SECONDS = 2  # how often the paused run looks for an answer (Prefect's default of 10 s feels sluggish)


class Approval(RunInput):
    """The answer to "promote this candidate to champion?"."""

    approve: bool
    """Promote it (true), or keep it a candidate (false)."""
    reviewer: str
    """Who decided."""
    reason: str = ""
    """Why, recorded on the model version."""


def await_approval(name: str, version: str, summary: str, timeout_s: int) -> bool | None:
    """Pause until a person approves or rejects `name` version `version`; record the answer on the version.

    Returns True (promoted to champion), False (rejected: it stays a candidate), None (no answer in time:
    nothing is promoted).
    """
    logger = get_run_logger()
    description = f"### Promote {name} v{version} to champion?\n\n{summary}\n"
    logger.info("waiting up to %d s for a person to approve %s v%s (resume this flow run)", timeout_s, name, version)
    question = Approval.with_initial_data(description=description, approve=False, reviewer="", reason="")
    try:
        answer = pause_flow_run(wait_for_input=question, timeout=timeout_s, poll_interval=POLL_SECONDS)
    except FlowPauseTimeout:
        registry.settle_approval(name, version, None, f"none within {timeout_s} s; not promoted")
        logger.warning("no answer within %d s: %s v%s is not promoted", timeout_s, name, version)
        return None
    note = f"by {answer.reviewer}" + (f": {answer.reason}" if answer.reason else "")
    registry.settle_approval(name, version, answer.approve, note)
    logger.info("%s v%s %s %s", name, version, "promoted to champion" if answer.approve else "rejected", note)
    return answer.approve
