"""A1111 option sections kept apart from modules.services.options' long table: the API's image
URLs, the Compatibility switches, the page's layout choices and the attention backends.

``defs()`` is merged into the option table last (its sections come after the others in Settings).
Each option's effect: the comment above it names the code that reads it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modules.core.attention import BACKEND_TITLES

if TYPE_CHECKING:
    from .options import OptionDef

# A1111's tab names (the page's top-level tabs: modules.ui.app); extensions' tabs are added by name
TAB_NAMES = ("txt2img", "img2img", "Extras", "PNG Info", "Checkpoint Merger", "Settings", "Extensions")


def defs(option_def: type[OptionDef]) -> dict[str, OptionDef]:
    O, C, UI = option_def, "Compatibility", "User interface"
    return {
        # input pictures given as http(s) URLs to the API (modules.api.convert): A1111's defaults, local
        # and private addresses refused unless the second is off; neither can be changed through the API
        "api_enable_requests": O(True, "Allow http:// and https:// URLs for input images in API", "API",
                                 section_id="API", restrict_api=True),
        "api_forbid_local_requests": O(True, "Forbid URLs to local resources", "API", section_id="API",
                                       restrict_api=True),
        "api_useragent": O("", "User agent for requests", "API", section_id="API", restrict_api=True),
        # A1111's compatibility switches (each reproduces an old behaviour; read at each job)
        "use_old_karras_scheduler_sigmas": O(False, "Use old karras scheduler sigmas (0.1 to 10).", C),
        "use_old_hires_fix_width_height": O(False, "For hires fix, use width/height sliders to set final resolution "
                                            "rather than first pass (disables Upscale by, Resize width/height to).", C),
        "hires_fix_use_firstpass_conds": O(False, "For hires fix, calculate conds of second pass using extra networks "
                                           "of first pass.", C),
        "use_old_scheduling": O(False, "Use old prompt editing timelines.", C),
        # (A1111 1.10 defines it and reads it nowhere: second-order samplers' prompt schedules are always
        # fixed, in Easel too; kept so that configs and API calls that set it are accepted)
        "dont_fix_second_order_samplers_schedule": O(False, "Do not fix prompt schedule for second order samplers "
                                                     "(no effect, as in A1111 1.10).", C),
        # the txt2img/img2img columns (modules.ui.generation_tab; read when the page is built)
        "samplers_in_dropdown": O(True, "Use dropdown for sampler selection instead of radio group (Reload UI "
                                  "after a change)", UI),
        "dimensions_and_batch_together": O(True, "Show Width/Height and Batch sliders in same row (Reload UI after "
                                           "a change)", UI),
        # the page's top-level tabs (modules.ui.app; read when the page is built): listed ones first / left out
        "ui_tab_order": O([], "UI tab order (Reload UI after a change)", UI, choices=TAB_NAMES, kind=list),
        "hidden_tabs": O([], "Hidden UI tabs (Reload UI after a change)", UI, choices=TAB_NAMES, kind=list),
        # the UNet's attention (modules.core.attention; applied to the loaded models before the next job)
        "cross_attention_optimization": O("Automatic", "Cross attention optimization", "Optimizations",
                                          choices=("Automatic", *BACKEND_TITLES, "None")),
        "upcast_attn": O(False, "Upcast cross attention layer to float32", "Stable Diffusion"),
    }
