"""Set up Easel and start it: `python launch.py` (see README.md, or `python launch.py --help`).

The work is in modules/launch_utils.py. The names below are re-exported because extensions'
install.py files call them as `import launch; launch.run_pip(...)`, as in A1111. Importing this
module has no side effects: `launch.args` is the parsed flags once launch.py has parsed them, else
(an install.py run as a subprocess) the defaults.
"""

from modules import launch_utils

python = launch_utils.python
git = launch_utils.git
index_url = launch_utils.index_url
dir_repos = launch_utils.dir_repos
run = launch_utils.run
run_pip = launch_utils.run_pip
run_python = launch_utils.run_python
is_installed = launch_utils.is_installed
requirements_met = launch_utils.requirements_met
git_clone = launch_utils.git_clone
repo_dir = launch_utils.repo_dir
commit_hash = launch_utils.commit_hash
git_tag = launch_utils.git_tag
run_extension_installer = launch_utils.run_extension_installer
run_extensions_installers = launch_utils.run_extensions_installers
prepare_environment = launch_utils.prepare_environment
start = launch_utils.start


def __getattr__(name: str):
    if name == "args":  # looked up each time: parsed in main(), after this module was imported
        return launch_utils.current_args()
    raise AttributeError(f"module 'launch' has no attribute {name!r}")


def main() -> None:
    launch_utils.main()


if __name__ == "__main__":
    main()
