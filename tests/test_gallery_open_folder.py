"""A1111's open_dir_button_choice: what the 📂 button under a gallery opens."""

from __future__ import annotations

from pathlib import Path

from modules.core.pipeline import generate
from modules.core.types import GenerationRequest
from modules.ui.gallery_buttons import GalleryButtons
from modules.ui.generation_tab import Shown
from tests.test_generation import Recorder, settings


def test_the_gallery_state_knows_where_each_entry_was_saved(tmp_path, sd1):
    request = GenerationRequest(prompt="x", seed=1, width=64, height=64, steps=1, batch_size=2, save_images=True)
    result = generate(request, sd1, settings(tmp_path), Recorder())
    shown = Shown.of(result)
    assert shown.first_image == 1 and len(shown.paths) == 3  # the grid, then the two pictures
    assert Path(shown.paths[0]).parent == tmp_path / "txt2img-grids" / "2026-11-23"
    assert [Path(p).parent for p in shown.paths[1:]] == [tmp_path / "txt2img-images" / "2026-11-23"] * 2
    assert all(Path(p).is_file() for p in shown.paths)

    unsaved = Shown.of(generate(GenerationRequest(prompt="x", seed=1, width=64, height=64, steps=1, save_images=False),
                                sd1, settings(tmp_path / "none"), Recorder()))
    assert unsaved.paths == [""] and not (tmp_path / "none").exists()


def test_the_folder_follows_the_option_and_the_selection(tmp_path):
    options = {"open_dir_button_choice": "Subdirectory"}
    root = tmp_path / "outputs" / "txt2img-images"
    buttons = GalleryButtons("txt2img", lambda: root, options=options)
    day1, day2 = root / "2026-12-06", root / "2026-12-07"
    state = {"index_of_first_image": 1, "paths": [str(tmp_path / "grids" / "g.png"), str(day1 / "a.png"),
                                                  str(day2 / "b.png"), ""]}
    assert buttons.folder_for(state, 2) == day2  # the selected picture's folder
    assert buttons.folder_for(state, 0) == tmp_path / "grids"  # the grid's
    assert buttons.folder_for(state, -1) == day1  # nothing selected: the first picture's
    assert buttons.folder_for(state, 3) == root  # a picture that was not saved
    assert buttons.folder_for({"infotexts": []}, -1) == root  # nothing generated yet
    options["open_dir_button_choice"] = "Subdirectory (even temp dir)"
    assert buttons.folder_for(state, 2) == day2
    options["open_dir_button_choice"] = "Output Root"
    assert buttons.folder_for(state, 2) == root
