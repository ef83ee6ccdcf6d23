"""Where Easel's files live, under A1111's names.

Standard library only: launch.py imports this before the venv exists.

`--data-dir`, `--models-dir` and `--ckpt` are read from sys.argv here, at import time, as A1111
does, so that any module (and any extension) can import the paths without waiting for the full
command line to be parsed. The full parser in modules/cmd_args.py declares the same flags, so
`python launch.py --help` documents them and a typo in them is still an error.
"""

import argparse
import os
import sys

modules_path = os.path.dirname(os.path.realpath(__file__))
script_path = os.path.dirname(modules_path)  # the repository root
cwd = os.getcwd()


def _pre_parse(argv: list[str]) -> argparse.Namespace:
    # Arguments after --run-tests belong to pytest, not to us.
    if "--run-tests" in argv:
        argv = argv[: argv.index("--run-tests")]
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--data-dir", type=str, default=None)
    parser.add_argument("--models-dir", type=str, default=None)
    parser.add_argument("--ckpt", type=str, default=None)
    known, _unknown = parser.parse_known_args(argv)
    return known


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


cmd_opts_pre = _pre_parse(sys.argv[1:])

# User data: settings, outputs, user extensions, embeddings.
data_path = _absolute(cmd_opts_pre.data_dir) if cmd_opts_pre.data_dir else script_path
# User model files: Stable-diffusion/, Lora/, VAE/, ...
models_path = _absolute(cmd_opts_pre.models_dir) if cmd_opts_pre.models_dir else os.path.join(data_path, "models")

extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
config_states_dir = os.path.join(data_path, "config_states")
default_output_dir = os.path.join(data_path, "outputs")
outputs_path = default_output_dir  # Easel's plainer name for the same folder

# Shipped with the code, so they follow script_path even when --models-dir points elsewhere.
shipped_models_path = os.path.join(script_path, "models")
sd_configs_path = os.path.join(shipped_models_path, "configs")
tokenizers_path = os.path.join(shipped_models_path, "tokenizers")
builtin_sd_model_file = os.path.join(shipped_models_path, "Stable-diffusion", "easel-shapes-v1.safetensors")

# A1111: the checkpoint named by --ckpt, else the default one.
sd_model_file = _absolute(cmd_opts_pre.ckpt) if cmd_opts_pre.ckpt else builtin_sd_model_file
default_sd_model_file = sd_model_file
