"""A generation job with scripts: A1111's flow on the worker, its result as a GenerationResult.

The adapters pass a `ScriptCall` with the request (`Engine.submit_txt2img(..., scripts=call)`):
the selected script's title (or None) and its arguments, and the AlwaysVisible scripts' arguments
by title; the UI may instead pass its positional component values (`ScriptCall.from_ui_args`).
On the worker, `ScriptHost.run` builds A1111's `p` from the request, lets the selected script's
`run(p, *args)` do the work (it calls process_images, directly, on this thread), or calls
`process_images(p)` itself, and turns the `Processed` into the GenerationResult the UI and the API
render. That A1111-side work is the `ScriptHost` the composition root hands the engine
(modules.script_host); this module never imports A1111's facade.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from modules.core.types import GenerationRequest, GenerationResult, RequestError


@dataclass
class ScriptCall:
    title: str | None = None  # the selectable script to run (None / "" / "None": none)
    args: list = field(default_factory=list)  # its arguments, in its ui() order (A1111's script_args)
    alwayson: dict[str, list] = field(default_factory=dict)  # AlwaysVisible title -> its arguments
    positional: list | None = None  # or: every value of ScriptRunner.inputs, as the UI has them

    @classmethod
    def from_ui_args(cls, runner, args) -> "ScriptCall":
        """The UI's values of `runner.inputs` (index 0: the Script dropdown, as index or title)."""
        return cls(positional=list(args))

    @classmethod
    def from_api(cls, script_name: str | None, script_args: list | None, alwayson_scripts: dict | None) -> "ScriptCall":
        """A1111's request fields: script_name, script_args, alwayson_scripts {"Title": {"args": [...]}}."""
        alwayson: dict[str, list] = {}
        for title, value in (alwayson_scripts or {}).items():
            if isinstance(value, dict):
                args = value.get("args", [])
            elif isinstance(value, list):  # lenient: the list itself
                args = value
            else:
                raise RequestError("alwayson_scripts", f"'{title}': expected {{\"args\": [...]}}, got {value!r}")
            if not isinstance(args, list):
                raise RequestError("alwayson_scripts", f"'{title}': args must be a list, got {type(args).__name__}")
            alwayson[str(title)] = args
        if script_args is not None and not isinstance(script_args, list):
            raise RequestError("script_args", f"must be a list, got {type(script_args).__name__}")
        return cls(title=script_name or None, args=list(script_args or []), alwayson=alwayson)

    @property
    def empty(self) -> bool:
        no_title = not self.title or self.title.strip().lower() == "none"
        return self.positional is None and no_title and not self.alwayson

    def script_args(self, runner) -> list:
        """The full positional argument list for `runner` (defaults where nothing was given);
        an unknown or misplaced script is a RequestError naming it and the known ones."""
        if self.positional is not None:
            return list(self.positional)
        args = runner.default_args()
        title = (self.title or "").strip()
        if title and title.lower() != "none":
            index = runner.selectable_index(title)
            if index is None:
                known = ", ".join(f"'{t.lower()}'" for t in runner.titles) or "none"
                raise RequestError("script_name", f"unknown script '{title}'; scripts here: {known}")
            script = runner.selectable_scripts[index - 1]
            _fill(args, script, self.args)
            args[0] = index
        for name, values in self.alwayson.items():
            script = runner.script(name)
            if script is None:
                known = ", ".join(f"'{s.title().lower()}'" for s in runner.alwayson_scripts) or "none"
                raise RequestError("alwayson_scripts", f"always on script '{name}' not found; always-on scripts here: {known}")
            if not script.alwayson:
                raise RequestError("alwayson_scripts", f"'{name}' is a selectable script: give it as script_name")
            _fill(args, script, values)
        return args


def _fill(args: list, script, values: list) -> None:
    """A1111: the given values replace the script's first arguments; the rest keep their defaults."""
    if script.args_from is None or script.args_to is None:
        return
    for i, value in enumerate(values[: script.args_to - script.args_from]):
        args[script.args_from + i] = value


class ScriptHost(Protocol):
    """What a script job needs from A1111's scripting layer, handed over by webui.py
    (modules.script_host.A1111ScriptHost): the tab's ScriptRunner, and the job run on the worker."""

    def runner_for(self, kind: str) -> Any: ...

    def run(self, engine: Any, kind: str, request: GenerationRequest, overrides: dict,
            call: ScriptCall) -> GenerationResult: ...


def to_result(processed, p, results: list[GenerationResult], engine) -> GenerationResult:
    """A Processed as the GenerationResult the adapters render: the leading images (grids) as
    `grid` and `extra_grids`, one infotext / seed / prompt per picture (padded from the first
    when a script returned fewer), the files every process_images() call saved."""
    if processed is None or not hasattr(processed, "images"):
        raise RuntimeError(f"the script returned {type(processed).__name__}, not a Processed result")
    images = list(processed.images) + list(getattr(processed, "extra_images", []) or [])
    first = max(0, min(int(getattr(processed, "index_of_first_image", 0) or 0), len(images)))
    leading, pictures = images[:first], images[first:]
    texts = list(getattr(processed, "infotexts", None) or [])
    if len(texts) == len(images):
        texts = texts[first:]
    last = results[-1] if results else None

    def per_picture(values, fallback) -> list:
        values = list(values or [])
        if len(values) > len(pictures) and len(values) == len(images):
            values = values[first:]
        return [values[i] if i < len(values) else (values[0] if values else fallback) for i in range(len(pictures))]

    result = GenerationResult(
        images=pictures,
        seeds=[int(s) for s in per_picture(processed.all_seeds, processed.seed)],
        subseeds=[int(s) for s in per_picture(processed.all_subseeds, processed.subseed)],
        prompts=per_picture(processed.all_prompts, processed.prompt),
        negative_prompts=per_picture(processed.all_negative_prompts, processed.negative_prompt),
        infotexts=per_picture(texts, processed.info),
        width=int(processed.width or (last.width if last else 0)),
        height=int(processed.height or (last.height if last else 0)),
        sampler_name=processed.sampler_name or (last.sampler_name if last else ""),
        scheduler=(last.scheduler if last else (p.scheduler or "Automatic")),
        grid=leading[0] if leading else None,
        model_name=p.sd_model_name or (last.model_name if last else ""),
        model_hash=p.sd_model_hash or (last.model_hash if last else None),
        clip_skip=int(processed.clip_skip or 1),
        extra_generation_params=dict(processed.extra_generation_params or {}),
        interrupted=bool(engine.state.interrupted) or any(r.interrupted for r in results),
    )
    if last is not None and len(pictures) == len(last.images) and last.images:
        result.width, result.height = last.width, last.height  # hires fix: the second pass's size
        result.first_pass_size = last.first_pass_size
    result.extra_grids = leading[1:]
    result.grids_from_script = bool(leading)
    result.paths = [path for r in results for path in r.paths]
    grid_paths = [r.grid_path for r in results if r.grid_path]
    result.grid_path = grid_paths[-1] if grid_paths else None
    for picture, text in zip(pictures, result.infotexts):
        if text and "parameters" not in picture.info:
            picture.info["parameters"] = text
    return result


def wanted(runner, call: ScriptCall) -> bool:
    """Whether a job needs the script flow: a script was chosen, or AlwaysVisible scripts exist in
    the tab's `runner` (they run on every job, as in A1111). Otherwise the plain generation runs."""
    if call.positional is not None:
        chosen = call.positional[0] if call.positional else 0
        if chosen not in (0, None, "None", ""):
            return True
    elif call.title and call.title.strip().lower() != "none":
        return True
    return bool(call.alwayson) or any(_alwayson_wanted(s, call) for s in runner.alwayson_scripts)


def _alwayson_wanted(script, call: ScriptCall) -> bool:
    """An AlwaysVisible script runs on every job (A1111), unless it says that the job's arguments give
    it nothing to do (``wanted_for(args)``: Easel's built-in ControlNet without an enabled unit)."""
    wanted_for = getattr(script, "wanted_for", None)
    if wanted_for is None:
        return True
    args = []
    if call.positional is not None and script.args_from is not None and script.args_to is not None:
        args = call.positional[script.args_from:script.args_to]
    return bool(wanted_for(args))
