"""Set up Easel and start it: `python launch.py` (see README.md, or `python launch.py --help`).

The work is in modules/launch_utils.py. The names below are re-exported because extensions'
install.py files call them as `import launch; launch.run_pip(...)`, as in A1111.
"""

from modules import launch_utils

args = launch_utils.args
python = launch_utils.python
run = launch_utils.run
run_pip = launch_utils.run_pip
is_installed = launch_utils.is_installed
commit_hash = launch_utils.commit_hash
git_tag = launch_utils.git_tag
prepare_environment = launch_utils.prepare_environment
start = launch_utils.start


def main() -> None:
    launch_utils.main()


if __name__ == "__main__":
    main()
