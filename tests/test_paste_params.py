"""The ↙️ button's conversion of infotext values into control updates (the browser test in
test_ui_browser.py drives the button itself)."""

import gradio as gr

from modules.ui.paste_params import unique, update_for


def test_numbers_are_converted_and_clamped_to_the_control():
    steps = gr.Slider(1, 150, step=1, value=20)
    cfg = gr.Slider(1.0, 30.0, step=0.5, value=7.0)
    assert update_for(steps, "30")["value"] == 30 and isinstance(update_for(steps, "30")["value"], int)
    assert update_for(steps, "400")["value"] == 150 and update_for(steps, "0")["value"] == 1
    assert update_for(cfg, "4.5")["value"] == 4.5
    seed = gr.Number(value=-1, precision=0)
    assert update_for(seed, "1234")["value"] == 1234
    assert update_for(steps, "many") == gr.update()  # a word where a number belongs: left alone


def test_choices_flags_and_text():
    sampler = gr.Dropdown(["Euler", "Euler a"], value="Euler")
    assert update_for(sampler, "Euler a")["value"] == "Euler a"
    assert update_for(sampler, "Sampler Easel lacks") == gr.update()
    radio = gr.Radio(["fill", "original"], value="original", type="index")
    assert update_for(radio, "fill")["value"] == "fill"
    box = gr.Checkbox(value=False)
    assert update_for(box, "True")["value"] is True and update_for(box, False)["value"] is False
    assert update_for(gr.Accordion("x", open=False), True) == gr.update(open=True)
    assert update_for(gr.Textbox(), 12)["value"] == "12"
    assert update_for(gr.Textbox(), None) == gr.update()


def test_a_component_listed_twice_is_updated_once():
    a, b = gr.Textbox(), gr.Textbox()
    assert unique([(a, "Prompt"), (b, "Negative prompt"), (a, "Other")]) == [(a, "Prompt"), (b, "Negative prompt")]


def test_infotext_skip_pasting_leaves_those_keys_out(server):
    """A1111's infotext_skip_pasting: the API's `infotext` (and the page's paste) disregard them."""
    import requests

    text = "a red cube\nNegative prompt: blurry\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 4242, Size: 64x64, Clip skip: 2"
    body = {"infotext": text, "save_images": False}
    url = server.url + "/sdapi/v1/txt2img"
    reply = requests.post(url, json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    pasted = reply.json()["info"]
    assert '"seed": 4242' in pasted and "Clip skip: 2" in pasted
    assert requests.post(server.url + "/sdapi/v1/options", json={"infotext_skip_pasting": ["Seed", "Clip skip"]},
                         timeout=60).status_code == 200
    try:
        skipped = requests.post(url, json=body, timeout=120).json()["info"]
    finally:
        requests.post(server.url + "/sdapi/v1/options", json={"infotext_skip_pasting": []}, timeout=60)
    assert '"seed": 4242' not in skipped and "Clip skip" not in skipped and '"steps": 2' in skipped
    refused = requests.post(server.url + "/sdapi/v1/options", json={"infotext_skip_pasting": ["Nope"]}, timeout=60)
    assert refused.status_code == 422 and "infotext_skip_pasting" in refused.text
