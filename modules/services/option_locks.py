"""The settings the command line locks, as A1111's flags do: --freeze-settings (every setting),
--freeze-settings-in-sections (A1111 section ids, or Easel's section names), --freeze-specific-settings
(setting names) and --hide-ui-dir-config (the folders and file names on the server).

The composition root (webui.build_engine) builds the `Restrictions` from the flags and hands them
to the options service, whose `Options.check` asks `refusal` on every change, so the API, the
Settings tab, override_settings and extensions' `shared.opts` are refused the same way, in A1111's
words. A value equal to the current one is no change, and always allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .options import OptionDef

# A1111's section ids (the first part of its `options_section`), which --freeze-settings-in-sections
# names; an Easel section not listed here is known by its name with the punctuation dropped
A1111_SECTION_IDS = {
    "Saving images": "saving-images", "Paths for saving": "saving-paths", "Saving to a directory": "saving-to-dirs",
    "Stable Diffusion": "sd",
    "Infotext": "infotext", "Extra Networks": "extra_networks", "Sampler parameters": "sampler-params",
    "Live previews": "ui", "User interface": "ui", "img2img": "img2img",
}
# A1111's restricted_opts: folders and file names on the server, locked by --hide-ui-dir-config
# (an extension that defines one of these is locked too)
DIRECTORY_OPTIONS = frozenset({
    "samples_filename_pattern", "directories_filename_pattern", "outdir_samples", "outdir_txt2img_samples",
    "outdir_img2img_samples", "outdir_extras_samples", "outdir_grids", "outdir_txt2img_grids",
    "outdir_img2img_grids", "outdir_save", "outdir_init_images",
})


def section_key(text: str) -> str:
    """How a section is compared: case, spaces, dashes and underscores do not count."""
    return re.sub(r"[^a-z0-9]+", "", str(text).lower())


class OptionRestricted(ValueError):
    """A change the command line forbids, with A1111's message. `frozen`: one of the freeze flags
    (A1111 fails an assertion), else --hide-ui-dir-config (A1111 raises a RuntimeError)."""

    def __init__(self, key: str, message: str, frozen: bool):
        super().__init__(message)
        self.key = key
        self.frozen = frozen


@dataclass(frozen=True)
class Restrictions:
    """What the command line locks: --freeze-settings (everything), --freeze-settings-in-sections
    (A1111 section ids or Easel section names), --freeze-specific-settings (option names) and
    --hide-ui-dir-config (the folder and file name options). Built by the composition root."""

    freeze_all: bool = False
    frozen_sections: frozenset[str] = frozenset()
    frozen_keys: frozenset[str] = frozenset()
    hide_dirs: bool = False

    @classmethod
    def of(cls, freeze_all: bool = False, sections: Iterable[str] = (), keys: Iterable[str] = (),
           hide_dirs: bool = False) -> "Restrictions":
        return cls(bool(freeze_all), frozenset(section_key(s) for s in sections if s.strip()),
                   frozenset(k.strip() for k in keys if k.strip()), bool(hide_dirs))

    def refusal(self, key: str, definition: OptionDef | None) -> OptionRestricted | None:
        """Why `key` may not change (A1111's checks, in its order and words), or None."""
        if self.freeze_all:
            return OptionRestricted(key, "changing settings is disabled", frozen=True)
        if definition is not None and self.frozen_sections & {section_key(definition.section_id or ""),
                                                              section_key(definition.section)}:
            return OptionRestricted(key, f"not possible to set '{key}' because settings in section "
                                         f"'{definition.section}' ({definition.section_id}) are frozen with "
                                         "--freeze-settings-in-sections", frozen=True)
        if key in self.frozen_keys:
            return OptionRestricted(key, f"not possible to set '{key}' because this setting is frozen with "
                                         "--freeze-specific-settings", frozen=True)
        if self.hide_dirs and (key in DIRECTORY_OPTIONS or (definition is not None and definition.restrict)):
            return OptionRestricted(key, f"not possible to set '{key}' because it is restricted with "
                                         "--hide_ui_dir_config", frozen=False)
        return None
