"""A1111's gradio_theme: the page is served with the chosen theme (the theme.css the page loads
and the theme named in its config), read as the page is built. webui's app runs in this process
on a free port over a data folder whose config.json names the theme."""

from __future__ import annotations

import pytest
import requests

from modules.services.option_sections import GRADIO_THEMES
from tests.server import serve_webui as serve


def served_theme(url: str) -> tuple[str, str]:
    """(the theme's name in the page's config, the theme.css the page loads)."""
    config = requests.get(url + "/config", timeout=60).json()
    css = requests.get(url + "/theme.css", timeout=60)
    assert css.status_code == 200
    return config.get("theme"), css.text


def test_the_page_is_served_with_the_chosen_theme(tiny_checkpoints, tmp_path):
    import gradio as gr

    assert GRADIO_THEMES[0] == "Default" and "gradio/soft" in GRADIO_THEMES
    with serve(tmp_path / "default", tiny_checkpoints.checkpoints_dir, {}) as url:
        default_name, default_css = served_theme(url)
    with serve(tmp_path / "soft", tiny_checkpoints.checkpoints_dir, {"gradio_theme": "gradio/soft"}) as url:
        soft_name, soft_css = served_theme(url)

    assert default_name == "default" and soft_name == "soft"
    assert soft_css != default_css
    # Soft's own colours (gr.themes.Soft(): indigo) are in the served CSS, not in the default's (orange)
    soft, default = gr.themes.Soft(), gr.themes.Default()
    assert soft.primary_500 in soft_css and soft.primary_500 not in default_css
    assert default.primary_500 in default_css


@pytest.mark.parametrize("name", [n for n in GRADIO_THEMES if n != "Default"])
def test_every_choice_is_a_theme_that_ships_with_gradio(name):
    """Each choice builds without the network (A1111 downloads hub themes; these come with Gradio)."""
    from modules.ui.app import page_theme

    class Options(dict):
        pass

    theme = page_theme(Options(gradio_theme=name))
    assert theme.name == name.split("/", 1)[1]
