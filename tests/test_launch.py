import os
import subprocess
import sys

import pytest

from modules import installer, launch_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch.py")


def launch(*argv, python=sys.executable, timeout=120, **env):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("COMMANDLINE_ARGS", "VENV_DIR", launch_utils.REEXEC_MARKER)}
    environment.update(env)
    return subprocess.run([python, LAUNCH, *argv], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=timeout)


# ---- launch.py as a user runs it ----------------------------------------------------------------

def test_exit_after_setup_with_current_python():
    result = launch("--exit", "--skip-install", VENV_DIR="-")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "VENV_DIR is '-'" in out
    assert "Python 3." in out and "Commit hash:" in out
    assert "Skipping the installation of requirements (--skip-install)" in out
    assert out.rstrip().endswith("Exiting because of --exit argument")


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs the tests to run inside a venv")
def test_reruns_itself_inside_the_venv():
    base_python = getattr(sys, "_base_executable", None)
    if not base_python or not os.path.exists(base_python):
        pytest.skip("no base interpreter to start from")
    result = launch("--exit", "--skip-install", python=base_python, VENV_DIR=sys.prefix)
    assert result.returncode == 0, result.stderr
    assert f"Running launch.py in the venv: {sys.prefix}" in result.stdout
    assert "Exiting because of --exit argument" in result.stdout


def test_unknown_flag_exits_2_before_any_setup(tmp_path):
    venv = tmp_path / "venv"
    result = launch("--no-such-flag", "--exit", VENV_DIR=str(venv))
    assert result.returncode == 2
    assert result.stderr.startswith("usage: launch.py")
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert not venv.exists()


def test_commandline_args_environment_variable():
    result = launch("--exit", "--skip-install", VENV_DIR="-", COMMANDLINE_ARGS="--share")
    assert result.returncode == 0, result.stderr
    assert "--share: sharing through a public tunnel is unavailable" in result.stdout
    assert launch("--exit", VENV_DIR="-", COMMANDLINE_ARGS="--bogus").returncode == 2


def test_run_tests_passes_arguments_and_exit_code_through():
    selected = launch("--skip-install", "--run-tests", "tests/test_cmd_args.py", "-q", "-k", "redact",
                      "-p", "no:cacheprovider", VENV_DIR="-")
    assert selected.returncode == 0, selected.stdout + selected.stderr
    assert "Running tests: python -m pytest tests/test_cmd_args.py" in selected.stdout
    assert "1 passed" in selected.stdout
    nothing = launch("--skip-install", "--run-tests", "tests/test_cmd_args.py", "-q", "-k", "no_such_test_zzz",
                     "-p", "no:cacheprovider", VENV_DIR="-")
    assert nothing.returncode == 5  # pytest's "no tests collected"


def test_pytest_command_defaults_to_the_tests_folder():
    assert launch_utils.pytest_command([])[1:] == ["-m", "pytest", "tests"]
    assert launch_utils.pytest_command(["-k", "api"])[1:] == ["-m", "pytest", "tests", "-k", "api"]
    named = launch_utils.pytest_command(["tests/test_launch.py::test_x", "-x"])
    assert named[1:] == ["-m", "pytest", "tests/test_launch.py::test_x", "-x"]


def test_offline_environment(monkeypatch):
    for name in launch_utils.OFFLINE_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    launch_utils.configure_offline_environment()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_venv_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("VENV_DIR", raising=False)
    assert launch_utils.venv_dir() == os.path.join(REPO, "venv")
    monkeypatch.setenv("VENV_DIR", "-")
    assert launch_utils.venv_dir() is None
    monkeypatch.setenv("VENV_DIR", str(tmp_path))
    assert launch_utils.venv_dir() == str(tmp_path)


# ---- "already installed": the hash stamp and the version check, without installing anything -----

class FakePip(list):
    """Records the requirements files pip would have installed; returns `returncode`."""
    returncode = 0

    def __call__(self, requirements):
        self.append(requirements)
        return self.returncode


@pytest.fixture
def pip_calls(monkeypatch):
    fake = FakePip()
    monkeypatch.setattr(installer, "pip_install_requirements", fake)  # install_requirements' own module
    return fake


def installed(name):
    from importlib.metadata import version
    return f"{name}=={version(name)}"


def test_met_pins_are_recorded_without_pip(tmp_path, pip_calls):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"# comment\n--prefer-binary\n\n{installed('pytest')}  # why\n", encoding="utf8")
    stamp = str(tmp_path / "stamp.json")
    assert launch_utils.install_requirements(str(requirements), stamp) is False
    assert pip_calls == []
    assert launch_utils.is_recorded(stamp, str(requirements))
    # second run: the hash alone says so
    assert launch_utils.install_requirements(str(requirements), stamp) is False
    assert pip_calls == []


def test_recorded_hash_skips_pip_only_while_the_pins_are_installed(tmp_path, pip_calls):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{installed('pytest')}\n", encoding="utf8")
    stamp = str(tmp_path / "stamp.json")
    launch_utils.record_installed(stamp, str(requirements))
    assert launch_utils.install_requirements(str(requirements), stamp) is False
    assert pip_calls == []
    # recorded, but a pin is no longer what is installed (an extension's installer changed it):
    # pip runs again instead of "Requirements already installed" (issue 18)
    requirements.write_text("surely-not-installed-package==1.0\n", encoding="utf8")
    launch_utils.record_installed(stamp, str(requirements))
    assert launch_utils.install_requirements(str(requirements), stamp) is True
    assert pip_calls == [str(requirements)]


def test_unmet_pins_run_pip_then_record(tmp_path, pip_calls):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{installed('pytest')}\nsurely-not-installed-package==1.0\n", encoding="utf8")
    stamp = str(tmp_path / "stamp.json")
    assert launch_utils.install_requirements(str(requirements), stamp) is True
    assert pip_calls == [str(requirements)]
    assert launch_utils.is_recorded(stamp, str(requirements))
    # an edited file no longer matches its hash, so it is checked (and installed) again
    requirements.write_text("surely-not-installed-package==2.0\n", encoding="utf8")
    assert not launch_utils.is_recorded(stamp, str(requirements))
    assert launch_utils.install_requirements(str(requirements), stamp) is True
    assert len(pip_calls) == 2


def test_failed_pip_is_not_recorded(tmp_path, pip_calls):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("surely-not-installed-package==1.0\n", encoding="utf8")
    stamp = str(tmp_path / "stamp.json")
    pip_calls.returncode = 1
    with pytest.raises(SystemExit, match="pip could not install"):
        launch_utils.install_requirements(str(requirements), stamp)
    assert not launch_utils.is_recorded(stamp, str(requirements))


def test_stamp_keeps_one_hash_per_file(tmp_path):
    stamp = str(tmp_path / "stamp.json")
    for name in ("requirements.txt", "requirements-test.txt"):
        (tmp_path / name).write_text(f"{name}\n", encoding="utf8")
        launch_utils.record_installed(stamp, str(tmp_path / name))
    assert set(launch_utils.read_stamp(stamp)) == {"requirements.txt", "requirements-test.txt"}
    (tmp_path / "broken.json").write_text("{not json", encoding="utf8")
    assert launch_utils.read_stamp(str(tmp_path / "broken.json")) == {}
    assert not launch_utils.is_recorded(None, str(tmp_path / "requirements.txt"))


def test_unmet_requirements_reports_why(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pytest==0.0.1\nsurely-not-installed-package==1.0\nnumpy>=1\n", encoding="utf8")
    unmet = launch_utils.unmet_requirements(str(requirements))
    assert unmet[0].startswith("pytest==0.0.1 (installed: ")
    assert unmet[1] == "surely-not-installed-package==1.0 (not installed)"
    assert unmet[2] == "numpy>=1 (not an exact pin)"


def test_local_version_labels():
    assert launch_utils._version_matches("2.13.0+cpu", "2.13.0")
    assert launch_utils._version_matches("2.13.0", "2.13.0")
    assert not launch_utils._version_matches("2.13.0+cpu", "2.13.0+cu128")
    assert not launch_utils._version_matches("2.13.1", "2.13.0")


def test_repository_requirements_are_exact_pins():
    for name in ("requirements.txt", "requirements-nodeps.txt", "requirements-test.txt", "requirements-test-nodeps.txt"):
        for line in launch_utils.read_requirements(os.path.join(REPO, name)):
            assert launch_utils._PIN.match(line), f"{name}: {line!r} is not name==version"
    assert launch_utils.pinned_version(launch_utils.REQUIREMENTS_FILE, "torch") == "2.13.0"


def test_ci_script_runs_the_readme_test_command():
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf8") as file:
        script = file.read()
    with open(os.path.join(REPO, "README.md"), encoding="utf8") as file:
        readme = file.read()
    assert "set -euo pipefail" in script
    assert script.rstrip().splitlines()[-1] == "python launch.py --run-tests"
    assert "python launch.py --run-tests" in readme
    assert os.access(os.path.join(REPO, ".ci", "run"), os.X_OK)


# ---- the browser helper --------------------------------------------------------------------------

def test_browser_helper_opens_a_page():
    from tests.browser import launch_browser

    with launch_browser() as browser:
        page = browser.new_page()
        page.set_content("<title>Easel</title><p id='p'>shapes</p>")
        assert page.title() == "Easel"
        assert page.inner_text("#p") == "shapes"


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_chromium_fails_under_ci_and_skips_elsewhere(monkeypatch, tmp_path, ci, outcome):
    from tests import browser

    monkeypatch.setattr(launch_utils, "CHROMIUM_PATH", str(tmp_path / "no-chromium"))
    monkeypatch.setattr(launch_utils, "_chromium_problem", None)
    monkeypatch.setattr(launch_utils.os, "geteuid", lambda: 1000)  # not root: no apt-get
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="browser tests need Chromium: .*no-chromium is missing"):
        browser.require_chromium()
