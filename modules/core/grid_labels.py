"""Labelled grids the way A1111 draws them (its ``images.GridAnnotation`` / ``draw_grid_annotations``
/ ``draw_prompt_matrix``): the X/Y/Z plot's legend and the prompt matrix's crossed-out parts.

Layout (A1111's numbers): the font size is ``(cell_width + cell_height) // 25``, lines are
``font_size // 2`` apart; column labels sit in a band above the cells as tall as the tallest column
label plus one line gap above and below; row labels get a band on the left ``cell_width * 3 // 4``
wide (none when every row label is empty); ``margin`` pixels separate the cells. Labels wrap at word
boundaries to their space and shrink when a single word is still too wide. An inactive label (a
prompt-matrix part left out of that column/row) is grey and struck through.

Pure PIL; colours and the font come in as arguments (A1111's options ``grid_text_active_color``,
``grid_text_inactive_color``, ``grid_background_color`` and ``font``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageColor, ImageDraw, ImageFont

__all__ = ["GridAnnotation", "GridColors", "draw_grid_annotations", "draw_prompt_matrix", "legend_padding",
           "prompt_matrix_annotations"]


class GridAnnotation:
    """One label line: its text and whether it is active (A1111's attribute names)."""

    def __init__(self, text: str = "", is_active: bool = True):
        self.text = text
        self.is_active = is_active
        self.size: tuple[int, int] | None = None  # measured (width, height), set while drawing
        self.allowed_width = 0

    def __repr__(self) -> str:
        return f"GridAnnotation({self.text!r}, is_active={self.is_active})"


@dataclass(frozen=True)
class GridColors:
    active: str = "#000000"  # grid_text_active_color
    inactive: str = "#999999"  # grid_text_inactive_color
    background: str = "#ffffff"  # grid_background_color


def _font(size: int, path: str | None = None) -> ImageFont.FreeTypeFont:
    size = max(1, int(size))
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass  # a missing or unreadable font file: the built-in one, as A1111 falls back to its own
    return ImageFont.load_default(size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _measure(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    box = draw.multiline_textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]


def _layout(labels: list[list[GridAnnotation]], width: int, font, draw) -> list[list[GridAnnotation]]:
    """Each label wrapped into lines of at most ``width`` pixels, each line measured."""
    out = []
    for group in labels:
        lines = []
        for label in group:
            for text in _wrap(draw, label.text, font, width):
                line = GridAnnotation(text, label.is_active)
                line.size = _measure(draw, text, font)
                line.allowed_width = width
                lines.append(line)
        out.append(lines)
    return out


def legend_padding(cell_width: int, cell_height: int, hor_texts, ver_texts, font_path: str | None = None) -> tuple[int, int]:
    """(left, top): the room the legend takes beside and above the cells."""
    font_size = (cell_width + cell_height) // 25
    spacing = font_size // 2
    font = _font(font_size, font_path)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    has_rows = any(label.text for group in ver_texts for label in group)
    left = cell_width * 3 // 4 if has_rows else 0
    hor = _layout([list(g) for g in hor_texts], cell_width, font, draw)
    heights = [sum(line.size[1] + spacing for line in lines) - spacing for lines in hor]
    top = max(heights) + spacing * 2 if heights and sum(heights) > 0 else 0
    return left, top


def draw_grid_annotations(grid: Image.Image, cell_width: int, cell_height: int,
                          hor_texts: Sequence[Sequence[GridAnnotation]], ver_texts: Sequence[Sequence[GridAnnotation]],
                          margin: int = 0, colors: GridColors = GridColors(), font_path: str | None = None) -> Image.Image:
    """A new image: the cells of ``grid`` (``cell_width`` x ``cell_height`` each, laid out in
    ``len(ver_texts)`` rows of ``len(hor_texts)``) spread ``margin`` apart, the column labels
    above them and the row labels to their left."""
    cols, rows = grid.width // cell_width, grid.height // cell_height
    if cols != len(hor_texts):
        raise ValueError(f"bad number of horizontal texts: {len(hor_texts)}; must be {cols}")
    if rows != len(ver_texts):
        raise ValueError(f"bad number of vertical texts: {len(ver_texts)}; must be {rows}")
    margin = max(0, int(margin))
    font_size = (cell_width + cell_height) // 25
    spacing = font_size // 2
    font = _font(font_size, font_path)
    background = ImageColor.getcolor(colors.background, "RGB")
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1), background))

    pad_left, pad_top = legend_padding(cell_width, cell_height, hor_texts, ver_texts, font_path)
    hor = _layout([list(g) for g in hor_texts], cell_width, font, measure)
    ver = _layout([list(g) for g in ver_texts], pad_left, font, measure)
    hor_heights = [sum(line.size[1] + spacing for line in lines) - spacing for lines in hor]
    # A1111 subtracts one gap per line for the row labels (their block is centred a little low)
    ver_heights = [sum(line.size[1] + spacing for line in lines) - spacing * len(lines) for lines in ver]

    result = Image.new("RGB", (grid.width + pad_left + margin * (cols - 1), grid.height + pad_top + margin * (rows - 1)),
                       background)
    for row in range(rows):
        for col in range(cols):
            cell = grid.crop((cell_width * col, cell_height * row, cell_width * (col + 1), cell_height * (row + 1)))
            result.paste(cell, (pad_left + (cell_width + margin) * col, pad_top + (cell_height + margin) * row))

    draw = ImageDraw.Draw(result)
    active = ImageColor.getcolor(colors.active, "RGB")
    inactive = ImageColor.getcolor(colors.inactive, "RGB")

    def draw_lines(x: float, y: float, lines: list[GridAnnotation]) -> None:
        for line in lines:
            size, line_font = font_size, font
            while size > 1 and _measure(draw, line.text, line_font)[0] > line.allowed_width:
                size -= 1  # one long word: shrink it until it fits
                line_font = _font(size, font_path)
            draw.multiline_text((x, y + line.size[1] / 2), line.text, font=line_font,
                                fill=active if line.is_active else inactive, anchor="mm", align="center")
            if not line.is_active:
                mid = y + line.size[1] // 2
                draw.line((x - line.size[0] // 2, mid, x + line.size[0] // 2, mid), fill=inactive, width=4)
            y += line.size[1] + spacing

    for col in range(cols):
        draw_lines(pad_left + (cell_width + margin) * col + cell_width / 2, pad_top / 2 - hor_heights[col] / 2, hor[col])
    for row in range(rows):
        draw_lines(pad_left / 2, pad_top + (cell_height + margin) * row + cell_height / 2 - ver_heights[row] / 2, ver[row])
    return result


def prompt_matrix_annotations(parts: Sequence[str]) -> tuple[list[list[GridAnnotation]], list[list[GridAnnotation]]]:
    """The labels of a prompt matrix grid: the first half of the optional parts (``parts[1:]``)
    across the columns, the rest down the rows, each active where that part is in the picture."""
    optional = list(parts[1:])
    boundary = math.ceil(len(optional) / 2)
    across, down = optional[:boundary], optional[boundary:]
    hor = [[GridAnnotation(text, bool(pos & (1 << i))) for i, text in enumerate(across)] for pos in range(1 << len(across))]
    ver = [[GridAnnotation(text, bool(pos & (1 << i))) for i, text in enumerate(down)] for pos in range(1 << len(down))]
    return hor, ver


def draw_prompt_matrix(grid: Image.Image, cell_width: int, cell_height: int, all_prompts: Sequence[str],
                       margin: int = 0, colors: GridColors = GridColors(), font_path: str | None = None) -> Image.Image:
    """A1111's ``draw_prompt_matrix``: ``all_prompts`` are the ``|``-separated parts, the first
    one (always present) unlabelled."""
    hor, ver = prompt_matrix_annotations(all_prompts)
    return draw_grid_annotations(grid, cell_width, cell_height, hor, ver, margin, colors, font_path)
