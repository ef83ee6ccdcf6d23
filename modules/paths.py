"""A1111's `modules.paths`: the same folders as modules.paths_internal (extensions import both).

A1111 also put cloned repositories (stable-diffusion, k-diffusion, ...) on sys.path here; Easel
has none, so this module only forwards names.
"""

from modules.paths_internal import (  # noqa: F401  (re-exported)
    builtin_sd_model_file,
    config_states_dir,
    cwd,
    data_path,
    default_output_dir,
    default_sd_model_file,
    extensions_builtin_dir,
    extensions_dir,
    models_path,
    modules_path,
    outputs_path,
    script_path,
    sd_configs_path,
    sd_model_file,
    shipped_models_path,
    tokenizers_path,
)

# A1111 kept the locations of its cloned repositories here; extensions look names up in it.
paths: dict[str, str] = {}
