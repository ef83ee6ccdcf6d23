"""The prompt boxes' helpers (A1111's ids): the token counters beside the prompt and negative
prompt (`<tab>_token_counter`, `<tab>_negative_token_counter`) and 🗑️ clear prompt
(`<tab>_clear_prompt`).

A counter shows `used/capacity` as A1111's: tokens of the longest text the prompt's schedule goes
through, counted by the loaded model's own prompt encoder, in chunks of 75 (`80/150` past the first).
It follows the box as the user types: the box's `change` event with `trigger_mode="always_last"`
(a count still running drops the keystrokes meanwhile and runs once more with the last text), so
Gradio 6 needs no hidden button and programmatic edits (a card, 📋, ↙️, 🗑️) are counted too.
Extensions may change what is counted through the `before_token_counter` callback.

A1111's hidden buttons are there too (`<tab>_token_button`, `<tab>_negative_token_button`): a click
counts its box again, and the page's A1111 globals (`update_token_counter(button_id)`,
`recalculatePromptTokens(prompt_id)`, `update_txt2img_tokens`, ... in prompt_tools.js) click them, so
extensions that ask for a recount after changing a box from their own script get it.

Ctrl+↑/↓ (weights), Generate forever and the icons are the page's: prompt_tools.js, style.css.
"""

from __future__ import annotations

import threading

import gradio as gr

from modules.core import extra_networks
from modules.services.engine import Engine

HINTS = {
    "clear_prompt": "Clear prompt",
    "token_counter": "Tokens used / tokens the prompt encoder takes in (chunks of 75)",
    "negative_token_counter": "Tokens used / tokens the prompt encoder takes in (chunks of 75)",
}

_conditioners: dict[int, object] = {}  # id(model) -> its conditioner, for the model loaded now only
_conditioners_lock = threading.Lock()


def _conditioner(engine: Engine):
    model = engine.models.model
    if model is None:
        return None
    with _conditioners_lock:
        found = _conditioners.get(id(model))
        if found is None or getattr(found, "model", model) is not model:
            _conditioners.clear()  # a checkpoint change: the old model's tokenizer is let go
            found = model.family.conditioner(model, embeddings=engine.embeddings)
            _conditioners[id(model)] = found
        return found


def token_count(engine: Engine, text: str, steps, styles, is_positive: bool = True) -> tuple[int, int]:
    """(used, capacity) for one prompt box, as A1111's update_token_counter counts: the
    before_token_counter callbacks first, then the selected styles (include_styles_into_token_counters),
    the extra networks' tags cut."""
    from modules import script_callbacks

    try:
        steps = max(1, int(steps or 1))
    except (TypeError, ValueError):
        steps = 1
    params = script_callbacks.BeforeTokenCounterParams(text or "", steps, list(styles or []), is_positive=is_positive)
    script_callbacks.before_token_counter_callback(params)
    text, steps = params.prompt or "", params.steps
    if params.styles and engine.styles is not None and engine.options.get("include_styles_into_token_counters", True):
        try:
            styled = engine.styles.apply(text if params.is_positive else "", "" if params.is_positive else text,
                                         params.styles)
            text = styled[0] if params.is_positive else styled[1]
        except Exception:  # noqa: BLE001 - a style that no longer exists: count the text as typed
            pass
    text, _ = extra_networks.parse_prompt(text)
    conditioner = _conditioner(engine)
    if conditioner is None:
        return 0, 75
    try:
        return conditioner.token_count(text, steps, params.is_positive)
    except Exception:  # noqa: BLE001 - half-typed prompt syntax: count it as plain text (A1111 does too)
        return conditioner.token_count(text.replace("[", " ").replace("]", " "), 1, False)


def counter_html(used: int, capacity: int) -> str:
    return f"<span class='gr-box gr-text-input'>{int(used)}/{int(capacity)}</span>"


class PromptTools:
    """One tab's counters and 🗑️; `build_counters` goes in the prompt column, `build_buttons` in
    the tools row, `wire` after the steps slider and the styles dropdown exist."""

    def __init__(self, engine: Engine, tabname: str):
        self.engine = engine
        self.tabname = tabname

    def _id(self, name: str) -> str:
        return f"{self.tabname}_{name}"

    def counting(self) -> bool:
        """A1111's disable_token_counters off (read when the page is built): the counters are there."""
        return not self.engine.options.get("disable_token_counters", False)

    def build_counter(self, negative: bool) -> gr.HTML:
        name = "negative_token_counter" if negative else "token_counter"
        counter = gr.HTML(counter_html(0, 75), elem_id=self._id(name), elem_classes=["token-counter"],
                          padding=False, container=False, visible=self.counting())
        # A1111's hidden button: clicked by update_token_counter(id) and recalculatePromptTokens(id)
        button = gr.Button(visible="hidden", elem_id=self._id("negative_token_button" if negative else "token_button"))
        if negative:
            self.negative_counter, self.negative_token_button = counter, button
        else:
            self.counter, self.token_button = counter, button
        return counter

    def build_buttons(self) -> None:
        self.clear_button = gr.Button("🗑️", elem_id=self._id("clear_prompt"), elem_classes=["tool"],
                                      min_width=40, scale=0)

    def wire(self, prompt: gr.Textbox, negative: gr.Textbox, steps: gr.Slider, styles: gr.Dropdown) -> None:
        def count_one(text, steps_value, selected, positive):
            return counter_html(*token_count(self.engine, text, steps_value, selected, positive))

        def count_both(text, negative_text, steps_value, selected):
            return count_one(text, steps_value, selected, True), count_one(negative_text, steps_value, selected, False)

        # One `always_last` listener per trigger, never two: Gradio re-dispatches the whole trigger
        # when a queued always_last call ends, so two listeners on one trigger re-queue each other
        # forever (the page then posted 4 requests a second and its main thread never rested).
        counted = ((prompt, self.counter, True), (negative, self.negative_counter, False)) if self.counting() else ()
        for box, counter, positive in counted:
            box.change(lambda text, steps_value, selected, positive=positive: count_one(text, steps_value, selected,
                                                                                        positive),
                       inputs=[box, steps, styles], outputs=counter, queue=False, show_progress="hidden",
                       trigger_mode="always_last")
        for source in (steps, styles) if counted else ():  # steps: a schedule's texts; styles: their text counts
            source.change(count_both, inputs=[prompt, negative, steps, styles],
                          outputs=[self.counter, self.negative_counter], queue=False, show_progress="hidden",
                          trigger_mode="always_last")
        buttons = ((prompt, self.counter, self.token_button, True),
                   (negative, self.negative_counter, self.negative_token_button, False))
        for box, counter, button, positive in buttons if counted else ():  # (disabled counters: no counting)
            button.click(lambda text, steps_value, selected, positive=positive: count_one(text, steps_value, selected,
                                                                                         positive),
                         inputs=[box, steps, styles], outputs=counter, queue=False, show_progress="hidden",
                         trigger_mode="always_last")
        # A1111 asks first ("Delete prompt?"); the answer is the page's, so the event is all JS
        self.clear_button.click(
            None, inputs=[prompt, negative], outputs=[prompt, negative], queue=False,
            js="(p, n) => confirm('Delete prompt?') ? ['', ''] : [p, n]")

