"""A1111's old name for modules.infotext_utils; extensions still import it."""

from modules.infotext_utils import *  # noqa: F401,F403
from modules.infotext_utils import (  # noqa: F401  (names `import *` skips or extensions reach for)
    ParamBinding,
    add_paste_fields,
    bind_buttons,
    connect_paste_params_buttons,
    create_buttons,
    create_override_settings_dict,
    get_override_settings,
    image_from_url_text,
    infotext_to_setting_name_mapping,
    parse_generation_parameters,
    paste_fields,
    register_paste_params_button,
    registered_param_bindings,
    reset,
    restore_old_hires_fix_params,
    send_image_and_dimensions,
)
