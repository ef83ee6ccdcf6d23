"""The worker queue: a job's state is over before its caller gets the result."""

from __future__ import annotations

import time

from modules.services.jobs import JobState, WorkQueue


class SlowEnd(JobState):
    """Ending takes a while, so a result handed out before the end is seen mid-way."""

    def end(self) -> None:
        time.sleep(0.3)
        super().end()


def test_state_is_idle_and_task_finished_when_the_result_arrives():
    # regression: the future was resolved before JobState.end(), so a /progress poll right after
    # a txt2img response could still report job_count 1 (seen in the API fuzz test)
    queue = WorkQueue(SlowEnd())
    assert queue.submit("txt2img", lambda: 42, task_id="task(a)").result(timeout=10) == 42
    assert queue.state.job_count == 0 and queue.state.job == ""
    assert "task(a)" in queue.finished


def test_a_failing_job_also_ends_before_its_error_arrives():
    queue = WorkQueue(SlowEnd())

    def fail():
        raise ValueError("bad input")

    future = queue.submit("txt2img", fail, task_id="task(b)")
    assert isinstance(future.exception(timeout=10), ValueError)
    assert queue.state.job_count == 0 and "task(b)" in queue.finished
    assert queue.submit("txt2img", lambda: "next").result(timeout=10) == "next"  # the worker goes on
