"""The extra networks panel under the prompt (A1111's ids): tabs Checkpoints, Lora and Textual
Inversion of cards, a search box that filters them, and Refresh.

Clicking a card (page.js): a Lora card adds `<lora:name:multiplier>` to the prompt (the
multiplier is the card's `preferred weight` when it has one, else the option
`extra_networks_default_multiplier`), followed by its `activation text`, and its `negative text`
to the negative prompt; a Textual Inversion card adds the embedding's name to the prompt box last
used (prompt or negative prompt); clicking again takes the text out again, as in A1111. A
checkpoint card loads that checkpoint (app.py wires `checkpoint_button` to the checkpoint
picker's load).

A card's ✏️ edits A1111's user metadata, the `.json` beside the file (modules.services.user_metadata;
the editor: extra_networks_metadata.py); its `description` replaces the card's own.

The lists come from the engine: `engine.checkpoints`, `engine.loras.items()` and
`engine.embeddings.loaded`; a service that is not there gives an empty tab. A preview is the
picture beside the file with the same stem (`name.png`, `name.preview.png`, also jpg/jpeg/webp),
sent inside the page as a small thumbnail, so it is covered by the UI's own login.

A1111's Extra Networks settings: above the cards, a button per folder of the page's model folders
(A1111's dirs view: a click searches for that folder, a second click clears the search;
extra_networks.js), the hidden ones (a name starting with ".") only with
`extra_networks_show_hidden_directories`; the cards of models in hidden folders are shown per
`extra_networks_hidden_models`: "Always", "When searched" (only while the search text has 4
characters or more) or "Never" (not on the page); `ui_extra_networks_tab_reorder` orders the tabs
as the page is built (A1111's matching: the first comma-separated part found in a tab's name).
"""

from __future__ import annotations

import base64
import html
import io
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image

from modules.core.infotext import plain_number
from modules.services import user_metadata
from modules.services.engine import Engine

from .extra_networks_metadata import MetadataEditor

PAGES = (("checkpoints", "Checkpoints"), ("lora", "Lora"), ("textual_inversion", "Textual Inversion"))
PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
THUMB_SIZE = 256

HINTS = {
    "extra_networks_button": "Show/hide extra networks",
    "extra_refresh": "Look for new files in the models folders",
}


@dataclass
class Card:
    name: str
    kind: str  # one of PAGES' ids
    insert: str  # the text a click adds (a checkpoint card: the checkpoint to load)
    search: str  # what the search box matches, lower case
    path: Path | None = None
    description: str = ""
    key: str = ""  # unique within its page: what the ✏️ editor asks the server about (default: name)
    negative: str = ""  # a Lora card's `negative text`, toggled in the negative prompt
    metadata: dict = field(default_factory=dict)  # the user metadata (the .json beside the file)
    search_only: bool = False  # in a hidden folder, extra_networks_hidden_models "When searched"

    def __post_init__(self):
        self.key = self.key or self.name
        self.metadata = user_metadata.read(self.path) if self.path is not None else {}
        if isinstance(self.metadata.get(user_metadata.DESCRIPTION), str):  # A1111: the json's wins
            self.description = self.metadata[user_metadata.DESCRIPTION]


# -- what there is -----------------------------------------------------------------------
def checkpoint_cards(engine: Engine) -> list[Card]:
    cards = []
    for info in engine.checkpoints.list():
        stem = info.model_name
        cards.append(Card(stem.rsplit("/", 1)[-1], "checkpoints", info.title,
                          f"{info.name} {info.title} {info.filename}".lower(), info.filename, info.name, key=info.name))
    return cards


def lora_cards(engine: Engine) -> list[Card]:
    loras = getattr(engine, "loras", None)
    if loras is None:
        return []
    multiplier = plain_number(float(engine.options.get("extra_networks_default_multiplier", 1.0)))
    items = loras.items()
    # A1111's default ("Alias from file"): the training name, unless two files share it
    aliases = [getattr(item, "alias", None) for item in items]
    cards = []
    for item, alias in zip(items, aliases):
        shown = alias if alias and aliases.count(alias) == 1 else item.name
        path = Path(item.path) if getattr(item, "path", None) else None
        terms = " ".join(filter(None, [item.name, shown, str(path or "")]))
        card = Card(shown, "lora", "", terms.lower(), path, item.name if shown != item.name else "", key=item.name)
        # A1111: `<lora:alias:W>` with W the preferred weight (0: none), then " " + the activation text
        weight = user_metadata.preferred_weight(card.metadata)
        card.insert = f"<lora:{shown}:{plain_number(weight) if weight else multiplier}>"
        activation = user_metadata.text(card.metadata, user_metadata.ACTIVATION_TEXT).strip()
        if activation:
            card.insert += " " + activation
        card.negative = user_metadata.text(card.metadata, user_metadata.NEGATIVE_TEXT).strip()
        cards.append(card)
    return sorted(cards, key=lambda c: c.name.lower())


def embedding_cards(engine: Engine) -> list[Card]:
    embeddings = getattr(engine, "embeddings", None)
    if embeddings is None:
        return []
    cards = []
    for name, item in dict(embeddings.loaded).items():
        path = Path(item.path) if getattr(item, "path", None) else None
        vectors = getattr(item, "vectors", 0)
        description = f"{vectors} vector{'s' if vectors != 1 else ''}" if vectors else ""
        cards.append(Card(name, "textual_inversion", name, f"{name} {path or ''}".lower(), path, description))
    return sorted(cards, key=lambda c: c.name.lower())


def page_roots(engine: Engine, page: str) -> list[Path]:
    """The folders a page's models come from (A1111's allowed_directories_for_previews)."""
    source = {"checkpoints": engine.checkpoints, "lora": getattr(engine, "loras", None),
              "textual_inversion": getattr(engine, "embeddings", None)}[page]
    return [Path(d) for d in getattr(source, "dirs", None) or []]


def in_hidden_place(path: Path | None, roots: list[Path]) -> bool:
    """A1111's test for a hidden model: its path below its models folder has a part (a folder or
    the file itself) whose name starts with "."."""
    if path is None:
        return False
    for root in roots:
        try:
            parts = Path(path).resolve().relative_to(Path(root).resolve()).parts
        except ValueError:
            continue
        return any(part.startswith(".") for part in parts)
    return False


def cards_for(engine: Engine, page: str) -> list[Card]:
    """The page's cards as extra_networks_hidden_models says: models in hidden folders left out
    ("Never"), marked to show only when searched ("When searched", A1111's default) or as any other."""
    cards = {"checkpoints": checkpoint_cards, "lora": lora_cards, "textual_inversion": embedding_cards}[page](engine)
    mode = engine.options.get("extra_networks_hidden_models", "When searched")
    if mode == "Always":
        return cards
    roots = page_roots(engine, page)
    shown = []
    for card in cards:
        if in_hidden_place(card.path, roots):
            if mode == "Never":
                continue
            card.search_only = True
        shown.append(card)
    return shown


def page_folders(engine: Engine, page: str) -> list[str]:
    """A1111's dirs view: each models folder of the page by its name, then its sub-folders that
    hold something ("Lora/style"), in natural order; the folders whose name starts with "." (and
    what is in them) only with extra_networks_show_hidden_directories."""
    show_hidden = engine.options.get("extra_networks_show_hidden_directories", True)
    folders: list[str] = []
    for root in page_roots(engine, page):
        if not root.is_dir():
            continue
        folders.append(root.name)
        found = []
        for sub in root.rglob("*"):
            try:
                if not sub.is_dir() or not any(sub.iterdir()):
                    continue
            except OSError:
                continue
            rel = sub.relative_to(root).parts
            if not show_hidden and any(part.startswith(".") for part in rel):
                continue
            found.append("/".join((root.name, *rel)))
        folders.extend(sorted(found, key=_natural_key))
    return list(dict.fromkeys(folders))


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def ordered_pages(order: str | None) -> list[tuple[str, str]]:
    """PAGES in the order of A1111's ui_extra_networks_tab_reorder: each tab goes by the first
    comma-separated part (lower case, trimmed) that its name contains, unmatched tabs last, ties in
    the usual order (A1111's matching: an empty part matches every tab)."""
    parts = [part.lower().strip() for part in (order or "").split(",")]

    def score(item: tuple[int, tuple[str, str]]):
        index, (_, title) = item
        name = title.lower()
        return next((i for i, part in enumerate(parts) if part in name), len(PAGES)), index

    return [page for _, page in sorted(enumerate(PAGES), key=score)]


def refresh_sources(engine: Engine) -> None:
    """Look at the folders again: checkpoints, LoRA files, embeddings (for the loaded model)."""
    engine.checkpoints.refresh()
    loras = getattr(engine, "loras", None)
    if loras is not None:
        loras.refresh()
    engine.refresh_embeddings()  # on the worker, after queued jobs


# -- previews ----------------------------------------------------------------------------
def find_preview(path: Path | None) -> Path | None:
    """`<stem>.png` or `<stem>.preview.png` (or jpg/jpeg/webp) beside the file, as A1111 looks."""
    if path is None:
        return None
    base = path.with_suffix("")
    for ext in PREVIEW_EXTENSIONS:
        for candidate in (base.with_name(f"{base.name}.{ext}"), base.with_name(f"{base.name}.preview.{ext}")):
            if candidate.is_file():
                return candidate
    return None


_thumbs: dict[Path, tuple[int, str]] = {}
_thumbs_lock = threading.Lock()


def thumbnail_uri(picture: Path) -> str | None:
    """A small JPEG of the picture as a data: URI (cached until the file changes)."""
    try:
        stamp = picture.stat().st_mtime_ns
    except OSError:
        return None
    with _thumbs_lock:
        known = _thumbs.get(picture)
    if known and known[0] == stamp:
        return known[1]
    try:
        with Image.open(picture) as image:
            image.thumbnail((THUMB_SIZE, THUMB_SIZE))
            if image.mode in ("RGBA", "LA", "P"):
                image = image.convert("RGBA")
                backdrop = Image.new("RGB", image.size, (255, 255, 255))
                backdrop.paste(image, mask=image.getchannel("A"))
                image = backdrop
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    with _thumbs_lock:
        _thumbs[picture] = (stamp, uri)
    return uri


# -- html ----------------------------------------------------------------------------------
def _no_options(key: str, default=None):
    return default


def card_html(card: Card, options=None) -> str:
    """One card. `options`: A1111's extra_networks_card_* settings (its width, height and text
    scale; the description shown or not, as text or as HTML); None: their defaults."""
    def attr(text: str) -> str:
        return html.escape(text, quote=True)

    get = options.get if options is not None else _no_options
    preview = find_preview(card.path)
    uri = thumbnail_uri(preview) if preview else None
    image = (f"<img class='preview' src='{uri}' alt='' loading='lazy'>" if uri
             else "<div class='preview no-preview'></div>")
    text = card.description if get("extra_networks_card_show_desc", True) else ""
    if text and not get("extra_networks_card_description_is_html", False):
        text = html.escape(text)
    description = f"<span class='description'>{text}</span>" if text else ""
    size = " ".join(f"{side}: {int(get(key, 0))}px;" for side, key in (
        ("width", "extra_networks_card_width"), ("height", "extra_networks_card_height")) if get(key, 0))
    style = f"style='{size}' " if size else ""
    scale = float(get("extra_networks_card_text_scale", 1.0))
    text_style = f" style='font-size: {scale * 100:g}%'" if scale != 1.0 else ""
    negative = f"data-negative='{attr(card.negative)}' " if card.negative else ""
    # extra_networks.js shows such a card only while the search text has 4 characters or more
    search_only = " search-only' data-search-only='1" if card.search_only else ""
    # A1111's ✏️ (its class and title); page.js opens the editor and keeps the click from the card
    edit = ("<div class='button-row'><button type='button' class='card-button edit-button' title='Edit metadata' "
            "data-easel-icon='edit'>✏️</button></div>") if card.path is not None else ""
    return (f"<div class='card{search_only}' tabindex='0' data-kind='{attr(card.kind)}' data-name='{attr(card.name)}' "
            f"data-key='{attr(card.key)}' data-insert='{attr(card.insert)}' {negative}"
            f"data-search='{attr(card.search)}' {style}title='{attr(str(card.path or card.name))}'>"
            f"{image}{edit}<div class='actions'{text_style}><span class='name'>{html.escape(card.name)}</span>"
            f"{description}</div></div>")


EMPTY = {
    "checkpoints": "No checkpoints. Put .safetensors or .ckpt files in models/Stable-diffusion and press Refresh.",
    "lora": "No LoRA files. Put them in models/Lora (or the --lora-dir folder) and press Refresh.",
    "textual_inversion": "No embeddings for this model. Put .pt or .safetensors files in the embeddings folder "
                         "and press Refresh.",
}


def dirs_html(tabname: str, page: str, folders: list[str]) -> str:
    """A1111's dirs view: a button per folder (its classes; extra_networks.js does the click)."""
    buttons = "".join(f"<button type='button' class='lg secondary gradio-button custom-button' "
                      f"data-path='{html.escape(folder, quote=True)}'>{html.escape(folder)}</button>"
                      for folder in folders)
    return (f"<div class='extra-network-dirs' id='{tabname}_{page}_dirs' data-tab='{tabname}'>{buttons}</div>"
            if buttons else "")


def page_html(tabname: str, page: str, cards: list[Card], options=None, folders: list[str] | None = None) -> str:
    body = "".join(card_html(c, options) for c in cards) or f"<div class='no-cards'>{html.escape(EMPTY[page])}</div>"
    return (dirs_html(tabname, page, folders or [])
            + f"<div class='extra-network-cards' id='{tabname}_{page}_cards' data-tab='{tabname}' "
            f"data-page='{page}'>{body}</div>")


# -- the panel -----------------------------------------------------------------------------
class ExtraNetworksPanel:
    def __init__(self, engine: Engine, tabname: str):
        self.engine = engine
        self.tabname = tabname
        self.pages: dict[str, gr.HTML] = {}
        self.editors: dict[str, MetadataEditor] = {}  # ✏️: each page's user metadata editor

    def _id(self, name: str) -> str:
        return f"{self.tabname}_{name}"

    def build_button(self) -> None:
        """The 🎴 toggle; called in the actions column under Generate."""
        self.toggle = gr.Button("🎴", elem_id=self._id("extra_networks_button"), elem_classes=["tool"],
                                min_width=40, scale=0)

    def build(self) -> None:
        """The panel itself (hidden until the toggle is pressed); called under the prompt row."""
        self.shown = gr.State(False)
        with gr.Column(visible=False, elem_id=self._id("extra_networks"), elem_classes=["extra-networks"]) as self.panel:
            with gr.Row(elem_classes=["extra-networks-controls"]):
                self.search = gr.Textbox(show_label=False, label="Search", placeholder="Search...", max_lines=1,
                                         elem_id=self._id("extra_search"), scale=4)
                self.refresh_button = gr.Button("Refresh", elem_id=self._id("extra_refresh"), scale=0, min_width=100)
            with gr.Tabs(elem_id=self._id("extra_tabs")):
                # ui_extra_networks_tab_reorder, read as the page is built (Reload UI)
                for page, title in ordered_pages(self.engine.options.get("ui_extra_networks_tab_reorder")):
                    with gr.Tab(title, elem_id=self._id(page), elem_classes=["extra-page"]):
                        self.pages[page] = gr.HTML(page_html(self.tabname, page, []),
                                                   elem_id=self._id(f"{page}_cards_html"))
                        self.editors[page] = MetadataEditor(
                            self.engine, self.tabname, page, cards=lambda page=page: cards_for(self.engine, page),
                            html_of=lambda cards, page=page: self.page_html(page, cards))
                        self.editors[page].build()
        # a checkpoint card: page.js puts its title in window.easelDesiredCheckpoint and clicks
        # this button; app.py wires it to the checkpoint picker's load, the title going in as
        # `checkpoint_name` (the event's js reads it from the window)
        self.checkpoint_name = gr.Textbox(visible="hidden", elem_id=self._id("extra_checkpoint_name"))
        self.checkpoint_button = gr.Button("load checkpoint", visible="hidden",
                                           elem_id=self._id("extra_change_checkpoint"))

    def page_html(self, page: str, cards: list[Card]) -> str:
        return page_html(self.tabname, page, cards, self.engine.options, page_folders(self.engine, page))

    def html(self) -> list[str]:
        return [self.page_html(page, cards_for(self.engine, page)) for page, _ in PAGES]

    def wire(self) -> None:
        outputs = [self.pages[page] for page, _ in PAGES]

        def toggle(shown: bool):
            shown = not shown
            pages = self.html() if shown else [gr.skip()] * len(PAGES)
            return shown, gr.update(visible=shown), *pages

        def refresh():
            refresh_sources(self.engine)
            return self.html()

        self.toggle.click(toggle, inputs=self.shown, outputs=[self.shown, self.panel, *outputs], queue=False)
        self.refresh_button.click(refresh, outputs=outputs, concurrency_limit=None, show_progress_on=outputs)
        for page, editor in self.editors.items():
            editor.wire(self.pages[page])
