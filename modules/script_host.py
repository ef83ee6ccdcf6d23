"""A1111's script flow for the engine: the adapter webui.py hands to `Engine(script_host=...)`.

The services never import A1111's facade (modules.scripts, modules.processing, modules.shared);
what a script job needs from it is here, behind the two methods of
`modules.services.script_jobs.ScriptHost`: the tab's ScriptRunner, and the job itself, run on the
worker: A1111's `p` built from the request, the selected script's `run(p, *args)` (it calls
process_images itself, on this thread) or `process_images(p)`, the `Processed` turned into the
GenerationResult the UI and the API render (script_jobs.to_result).
"""

from __future__ import annotations

from typing import Any

from modules import processing, scripts, shared
from modules.core.types import GenerationRequest, GenerationResult
from modules.services.script_jobs import ScriptCall, to_result


def runner_for(kind: str):
    """The ScriptRunner of a tab ("txt2img" or "img2img")."""
    return scripts.scripts_img2img if kind == "img2img" else scripts.scripts_txt2img


def describe_scripts(kind: str) -> list[dict[str, Any]]:
    """A1111's /sdapi/v1/script-info entries of one tab."""
    runner = runner_for(kind)
    runner.ensure_layout()
    return [s.api_info for s in runner.scripts if s.api_info is not None]


def run_script_job(engine, kind: str, request: GenerationRequest, overrides: dict, call: ScriptCall) -> GenerationResult:
    """On the worker: A1111's txt2img()/img2img() with `call`'s scripts."""
    runner = runner_for(kind)
    args = call.script_args(runner)
    p = processing.from_request(request, overrides)
    shared.state.announced_job_count = None
    with processing.collect_results() as results:
        p.scripts = runner
        p.script_args = args
        processed = runner.run(p, *p.script_args)
        if processed is None:
            processed = processing.process_images(p)
    p.close()
    return to_result(processed, p, results, engine)


class A1111ScriptHost:
    """The engine's ScriptHost over A1111's global script runners."""

    def runner_for(self, kind: str):
        return runner_for(kind)

    def run(self, engine, kind: str, request: GenerationRequest, overrides: dict, call: ScriptCall) -> GenerationResult:
        return run_script_job(engine, kind, request, overrides, call)
