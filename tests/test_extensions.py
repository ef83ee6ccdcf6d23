"""Extensions on disk: discovery and metadata.ini, enable/disable, preload.py flags, install.py at
launch, Install from URL and who may use it, and broken extensions in a real server.

The test extensions are in tests/fixtures/extensions/; each test copies the ones it needs into its
own temporary extensions folders.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modules import cmd_args, extension_install, extensions, launch_utils, paths_internal

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "extensions"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def ext_env(tmp_path, monkeypatch):
    """Empty user and built-in extension folders under tmp_path (also the data dir), and the
    module's remembered state put back afterwards."""
    user, builtin = tmp_path / "extensions", tmp_path / "extensions-builtin"
    user.mkdir()
    builtin.mkdir()
    monkeypatch.setattr(extensions, "extensions_dir", str(user))
    monkeypatch.setattr(extensions, "extensions_builtin_dir", str(builtin))
    monkeypatch.setattr(paths_internal, "data_path", str(tmp_path))
    for name, value in (("_settings", {}), ("_cmd_opts", None), ("_errors", {}), ("_disabled_for_run", {})):
        monkeypatch.setattr(extensions, name, value)
    saved = (list(extensions.extensions), dict(extensions.extension_paths), dict(extensions.loaded_extensions))
    yield tmp_path
    extensions.extensions[:] = saved[0]
    extensions.extension_paths.clear()
    extensions.extension_paths.update(saved[1])
    extensions.loaded_extensions.clear()
    extensions.loaded_extensions.update(saved[2])


def add(root: Path, fixture: str, name: str | None = None) -> Path:
    target = root / (name or fixture)
    shutil.copytree(FIXTURES / fixture, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_DATE": "2024-01-02T03:04:05+00:00", "GIT_COMMITTER_DATE": "2024-01-02T03:04:05+00:00",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd)}
    result = subprocess.run(["git", "-c", "user.name=Easel Test", "-c", "user.email=test@example.invalid",
                             "-c", "init.defaultBranch=main", "-c", "protocol.file.allow=always", *args],
                            cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def make_repo(path: Path, fixture: str) -> Path:
    """A git repository holding a copy of a fixture extension, with one commit on `main` and a
    `dev` branch with one more file."""
    shutil.copytree(FIXTURES / fixture, path, ignore=shutil.ignore_patterns("__pycache__"))
    git("init", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-m", "first", cwd=path)
    git("checkout", "-b", "dev", cwd=path)
    (path / "DEV.txt").write_text("dev branch\n")
    git("add", "-A", cwd=path)
    git("commit", "-m", "dev", cwd=path)
    git("checkout", "main", cwd=path)
    return path


JAN_2_2024 = 1704164645  # 2024-01-02T03:04:05Z


# ---- discovery, metadata.ini, enable/disable ----------------------------------------------------

def test_discovery_order_metadata_and_requirements(ext_env, capsys):
    user, builtin = Path(extensions.extensions_dir), Path(extensions.extensions_builtin_dir)
    add(user, "page_assets")
    add(user, "preload_flag")
    add(builtin, "install_marker", "zz_builtin")
    (user / "not-a-folder.txt").write_text("ignored")
    found = extensions.list_extensions({})

    # built-ins first (A1111 1.9), each folder sorted by name; files are not extensions
    assert [(e.name, e.is_builtin) for e in found] == [("zz_builtin", True), ("page_assets", False), ("preload_flag", False)]
    assert extensions.extensions == found
    page = extensions.loaded_extensions["page-assets"]  # metadata.ini's Name, lower case
    assert page.name == "page_assets" and page.canonical_name == "page-assets"
    assert page.metadata.requires == ["easel-preload-flag", "no-such-extension"]
    assert page.metadata.get_script_requirements("After", "scripts/a.py") == ["first", "second"]
    assert page.metadata.get_script_requirements("Before", "scripts/a.py") == ["other"]
    assert extensions.loaded_extensions["easel-preload-flag"].name == "preload_flag"
    assert extensions.loaded_extensions["zz_builtin"].path == str(builtin / "zz_builtin")  # no metadata: folder name
    # the requirement that is installed is fine; the missing one is reported with the extension's name
    assert page.error == 'requires "no-such-extension", which is not installed'
    assert '[extensions] page_assets: requires "no-such-extension", which is not installed' in capsys.readouterr().err
    assert extensions.find_extension(str(user / "page_assets" / "javascript" / "a.js")) is page
    assert extensions.find_extension(str(REPO / "webui.py")) is None


def test_duplicate_canonical_name_is_reported_and_skipped(ext_env):
    user, builtin = Path(extensions.extensions_dir), Path(extensions.extensions_builtin_dir)
    add(builtin, "preload_flag", "builtin_flag")
    add(user, "preload_flag", "user_flag")  # the same metadata Name
    found = extensions.list_extensions({})
    assert [e.name for e in found] == ["builtin_flag"]
    assert extensions.errors_of("user_flag") == [
        f'has the canonical name "easel-preload-flag" of "builtin_flag" ({builtin / "builtin_flag"}); it is not loaded']


def test_disabled_and_disable_all_settings_and_flags(ext_env):
    user, builtin = Path(extensions.extensions_dir), Path(extensions.extensions_builtin_dir)
    add(builtin, "preload_flag", "shipped")
    add(user, "page_assets")
    add(user, "broken_import")
    settings = {"disabled_extensions": ["broken_import"]}
    extensions.list_extensions(settings, argparse.Namespace(disable_all_extensions=False, disable_extra_extensions=False))
    assert settings["disable_all_extensions"] == "none"  # A1111's option added to the settings
    assert {e.name: e.enabled for e in extensions.extensions} == {"shipped": True, "page_assets": True, "broken_import": False}
    assert [e.name for e in extensions.active()] == ["shipped", "page_assets"]

    # the settings are kept by reference: a change counts without listing again
    settings["disable_all_extensions"] = "extra"
    assert [e.name for e in extensions.active()] == ["shipped"]
    settings["disable_all_extensions"] = "all"
    assert extensions.active() == []
    settings["disable_all_extensions"] = "none"

    # the flags win over the setting
    extensions.list_extensions(cmd_opts=argparse.Namespace(disable_all_extensions=False, disable_extra_extensions=True))
    assert [e.name for e in extensions.active()] == ["shipped"]
    extensions.list_extensions(cmd_opts=argparse.Namespace(disable_all_extensions=True, disable_extra_extensions=False))
    assert extensions.active() == []
    assert len(extensions.extensions) == 3  # still listed (the Extensions tab shows them)


def test_page_files_of_active_extensions(ext_env):
    user = Path(extensions.extensions_dir)
    add(user, "page_assets")
    add(user, "preload_flag")
    other = add(user, "page_assets", "second_assets")
    (other / "metadata.ini").unlink()  # else it clashes with page_assets' canonical name
    (other / "localizations" / "de_DE.json").write_text('{"Generate": "Los"}')
    settings = {}
    extensions.list_extensions(settings)
    assert extensions.javascript_files() == [str(user / "page_assets" / "javascript" / n) for n in ("a.js", "b.js")] + \
        [str(other / "javascript" / n) for n in ("a.js", "b.js")]  # not notes.txt
    assert extensions.css_files() == [str(user / "page_assets" / "style.css"), str(other / "style.css")]
    assert extensions.localization_files() == {"de_DE": str(other / "localizations" / "de_DE.json")}  # the later one
    settings["disabled_extensions"] = ["page_assets", "second_assets"]
    extensions.list_extensions()
    assert extensions.javascript_files() == [] and extensions.css_files() == []


def test_git_information_without_a_git_library(ext_env, tmp_path):
    source = make_repo(tmp_path / "source", "install_marker")
    head = git("rev-parse", "HEAD", cwd=source)
    user = Path(extensions.extensions_dir)
    git("clone", "--branch", "dev", source.as_uri(), str(user / "cloned"), cwd=tmp_path)  # packed objects
    shutil.copytree(source, user / "checkout")  # loose objects, no remote
    (user / "plain").mkdir()
    extensions.list_extensions({})
    by_name = {e.name: e.to_dict() for e in extensions.extensions}
    dev_head = git("rev-parse", "dev", cwd=source)
    assert by_name["cloned"] == {"name": "cloned", "remote": source.as_uri(), "branch": "dev", "commit_hash": dev_head,
                                 "version": dev_head[:8], "commit_date": JAN_2_2024, "enabled": True,
                                 "is_builtin": False, "error": None}
    assert by_name["checkout"]["commit_hash"] == head and by_name["checkout"]["branch"] == "main"
    assert by_name["checkout"]["remote"] == "" and by_name["checkout"]["commit_date"] == JAN_2_2024
    assert by_name["plain"]["commit_hash"] == "" and by_name["plain"]["version"] == "" and by_name["plain"]["remote"] == ""


# ---- preload.py -------------------------------------------------------------------------------

def test_preload_flags_of_active_extensions_parse(ext_env, capsys):
    user = Path(extensions.extensions_dir)
    add(user, "preload_flag")
    config = ext_env / "config.json"
    argv = ["--ui-settings-file", str(config), "--easel-test-flag", "hello"]
    assert cmd_args.parse_args(argv).easel_test_flag == "hello"
    assert cmd_args.parse_args(argv[:2]).easel_test_flag == "unset"

    # disabled (setting or flag): its flag is unknown, so using it is a usage error
    config.write_text(json.dumps({"disabled_extensions": ["preload_flag"]}))
    with pytest.raises(SystemExit) as exited:
        cmd_args.parse_args(argv)
    assert exited.value.code == 2
    config.write_text("{}")
    with pytest.raises(SystemExit):
        cmd_args.parse_args([*argv, "--disable-all-extensions"])
    assert "unrecognized arguments: --easel-test-flag hello" in capsys.readouterr().err


def test_broken_preload_is_reported_and_the_other_flags_still_parse(ext_env, capsys):
    user = Path(extensions.extensions_dir)
    add(user, "preload_flag")
    broken = user / "broken_preload"
    broken.mkdir()
    (broken / "preload.py").write_text("import no_such_module_for_easel\n")
    clashing = user / "clashing_preload"
    clashing.mkdir()
    (clashing / "preload.py").write_text("def preload(parser):\n    parser.add_argument('--port')\n")
    opts = cmd_args.parse_args(["--ui-settings-file", str(ext_env / "none.json"), "--easel-test-flag", "x", "--port", "8000"])
    assert opts.easel_test_flag == "x" and opts.port == 8000
    err = capsys.readouterr().err
    assert "[extensions] broken_preload: preload.py failed to load: ModuleNotFoundError" in err
    assert "[extensions] clashing_preload: preload(parser) failed: ArgumentError" in err


# ---- install.py ---------------------------------------------------------------------------------

def test_installers_run_when_new_changed_or_missing_requirements(ext_env):
    user = Path(extensions.extensions_dir)
    marker = add(user, "install_marker")
    stamp = str(ext_env / "stamp.json")
    runs = marker / "install-runs.txt"

    assert launch_utils.run_extensions_installers(None, stamp=stamp) == ["install_marker"]
    # install.py ran in a subprocess that imported A1111's `launch` names
    assert runs.read_text().splitlines() == ["pip installed=True skip_install=False"]
    assert launch_utils.run_extensions_installers(None, stamp=stamp) == []  # nothing new: not again
    assert len(runs.read_text().splitlines()) == 1

    (marker / "requirements.txt").write_text("pip\nno-such-package-for-easel==1.0\n")
    assert launch_utils.run_extensions_installers(None, stamp=stamp) == ["install_marker"]  # changed
    assert launch_utils.run_extensions_installers(None, stamp=stamp) == ["install_marker"]  # still not met
    assert len(runs.read_text().splitlines()) == 3

    (marker / "requirements.txt").write_text("pip\n")
    launch_utils.run_extensions_installers(None, stamp=stamp)
    config = ext_env / "config.json"
    config.write_text(json.dumps({"disabled_extensions": ["install_marker"]}))
    (marker / "install.py").write_text((marker / "install.py").read_text() + "\n# changed\n")
    assert launch_utils.run_extensions_installers(str(config), stamp=stamp) == []  # disabled: not run
    assert len(runs.read_text().splitlines()) == 4


def test_failing_installer_is_reported_and_its_extension_skipped(ext_env, capsys):
    user = Path(extensions.extensions_dir)
    add(user, "install_fails")
    add(user, "install_marker")
    stamp = str(ext_env / "stamp.json")
    assert launch_utils.run_extensions_installers(None, stamp=stamp) == ["install_marker"]  # the launch goes on
    out, err = capsys.readouterr()
    assert "[install_fails] install_fails: downloading a package..." in out
    report = ("install.py failed (exit code 3); the extension is disabled until the next start. Its last output:\n"
              "install_fails: downloading a package...\ninstall_fails: no network")
    assert f"[extensions] install_fails: {report}" in err
    extensions.list_extensions({})
    failed = extensions.loaded_extensions["install_fails"]
    assert failed.enabled and failed.disabled_reason == "install.py failed (exit code 3)"
    assert failed.error == report
    assert [e.name for e in extensions.active()] == ["install_marker"]
    # not recorded: it runs again at the next launch
    assert "install_fails" not in json.dumps(json.loads(Path(stamp).read_text()))


def _launch(*argv: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COMMANDLINE_ARGS", launch_utils.REEXEC_MARKER)}
    env["VENV_DIR"] = "-"
    return subprocess.run([sys.executable, str(REPO / "launch.py"), "--data-dir", str(data_dir), *argv],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_real_launch_runs_installers_once_and_survives_a_failing_one(tmp_path):
    data = tmp_path / "data"
    (data / "extensions").mkdir(parents=True)
    marker = add(data / "extensions", "install_marker")
    add(data / "extensions", "install_fails")
    add(data / "extensions", "preload_flag")
    first = _launch("--exit", "--easel-test-flag", "hi", data_dir=data)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running install.py of extension install_marker (new extension)" in first.stdout
    assert "[extensions] install_fails: install.py failed (exit code 3)" in first.stderr
    assert first.stdout.rstrip().endswith("Exiting because of --exit argument")
    assert len((marker / "install-runs.txt").read_text().splitlines()) == 1

    second = _launch("--exit", data_dir=data)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "install_marker" not in second.stdout  # already installed in this Python environment
    assert "install_fails: install.py failed" in second.stderr  # tried again, still failing
    assert len((marker / "install-runs.txt").read_text().splitlines()) == 1

    skipped = _launch("--exit", "--skip-install", data_dir=data)
    assert skipped.returncode == 0 and "install_fails" not in skipped.stdout + skipped.stderr


# ---- Install from URL ---------------------------------------------------------------------------

def flags(*argv: str) -> argparse.Namespace:
    return cmd_args.parse_args(list(argv), extra_preloads=())


@pytest.mark.parametrize("argv, refused", [
    ((), False), (("--server-name", "127.0.0.1"), False), (("--server-name", "localhost"), False),
    (("--server-name", "::1"), False), (("--listen",), True), (("--server-name", "0.0.0.0"), True),
    (("--server-name", "192.168.1.5"), True), (("--share",), True),
    (("--listen", "--enable-insecure-extension-access"), False),
])
def test_who_may_change_extensions(argv, refused):
    refusal = extension_install.access_refusal(flags(*argv))
    assert (refusal is not None) == refused
    if refused:
        assert "--enable-insecure-extension-access" in refusal and "reachable from other computers" in refusal


def test_install_from_url_refused_when_listening(ext_env, tmp_path):
    from modules.services.options import Options
    from modules.ui.extensions_tab import ExtensionsTab

    repo = make_repo(tmp_path / "repo", "install_marker")
    tab = ExtensionsTab(Options(None), cmd_opts=flags("--listen"))
    url_box, table, message = tab.install(repo.as_uri(), "", "")
    assert "Extension access is disabled" in message and "--listen" in message
    assert os.listdir(extensions.extensions_dir) == []  # nothing cloned
    info, _table, flag = tab.apply("[]", "none")  # enabling/disabling is refused as well (A1111)
    assert "Extension access is disabled" in info and flag == ""


def test_install_from_url_clones_and_runs_install_py(ext_env, tmp_path):
    from modules.services.options import Options
    from modules.ui.extensions_tab import ExtensionsTab

    repo = make_repo(tmp_path / "repo", "install_marker")
    tab = ExtensionsTab(Options(None), cmd_opts=flags("--listen", "--enable-insecure-extension-access"))
    url_box, table, message = tab.install(repo.as_uri(), "", "")
    target = Path(extensions.extensions_dir) / "repo"
    assert f"Installed into {target}" in message and url_box == ""
    assert (target / "install-runs.txt").read_text().splitlines() == ["pip installed=True skip_install=False"]
    assert 'data-extension="repo"' in table and repo.as_uri() in table
    info = extensions.loaded_extensions["repo"].to_dict()
    assert info["branch"] == "main" and info["commit_hash"] == git("rev-parse", "main", cwd=repo)
    # recorded as installed: the next launch does not run install.py again
    assert launch_utils.run_extensions_installers(None) == []

    # a branch and a folder name of one's choosing
    other = make_repo(tmp_path / "other.git", "preload_flag")
    target = extension_install.install_from_url(other.as_uri(), "dev", "other_name", cmd_opts=tab.cmd_opts,
                                                run_installer=False)
    assert Path(target).name == "other_name" and (Path(target) / "DEV.txt").is_file()
    assert extensions.loaded_extensions["easel-preload-flag"].to_dict()["branch"] == "dev"
    # the same URL or folder again, or a bad URL, is an error with the reason, and installs nothing
    _url, _table, again = tab.install(repo.as_uri() + ".git", "", "another_name")
    assert "Extension with this URL is already installed: repo" in again
    _url, _table, again = tab.install(other.as_uri() + "x", "", "other_name")
    assert "Extension directory already exists" in again
    _url, _table, missing = tab.install((tmp_path / "nothing-here").as_uri(), "", "fresh")
    assert "git clone failed" in missing and not (Path(extensions.extensions_dir) / "fresh").exists()
    _url, _table, empty = tab.install("  ", "", "")
    assert "No URL specified" in empty
    with pytest.raises(ValueError, match="Not a usable folder name"):
        extension_install.install_from_url(repo.as_uri(), None, "../escape", cmd_opts=tab.cmd_opts)


def test_apply_stores_the_state_and_says_a_restart_is_needed(ext_env, tmp_path):
    from modules.services.options import Options
    from modules.ui.extensions_tab import ExtensionsTab

    add(Path(extensions.extensions_dir), "page_assets")
    add(Path(extensions.extensions_dir), "preload_flag")
    options = Options(tmp_path / "config.json")
    extensions.list_extensions(options.data)
    tab = ExtensionsTab(options, cmd_opts=flags())
    info, table, flag = tab.apply(json.dumps(["page_assets"]), "extra")
    assert "Restart Easel for the change to take effect" in info and flag == ""  # not started by webui.main
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["disabled_extensions"] == ["page_assets"] and stored["disable_all_extensions"] == "extra"
    assert 'name="enable_page_assets" data-extension="page_assets">' in table  # unchecked now
    assert 'name="enable_preload_flag" data-extension="preload_flag" checked="checked">' in table
    bad, _table, _flag = tab.apply("not json", "none")
    assert "wrong list of disabled extensions" in bad
    assert json.loads((tmp_path / "config.json").read_text())["disabled_extensions"] == ["page_assets"]


# ---- a real server --------------------------------------------------------------------------------

def test_server_with_broken_and_disabled_extensions_serves_and_generates(tiny_checkpoints, tmp_path):
    from tests.server import run_server

    data = tmp_path / "data"
    user = data / "extensions"
    user.mkdir(parents=True)
    for name in ("preload_flag", "broken_syntax", "broken_import", "page_assets"):
        add(user, name)
    add(user, "install_fails", "switched_off")
    (data / "config.json").write_text(json.dumps({"disabled_extensions": ["switched_off"]}))
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--ckpt", str(tiny_checkpoints.sd1),
                    "--easel-test-flag", "hello") as server:
        flags_seen = server.get("/sdapi/v1/cmd-flags").json()
        assert flags_seen["easel_test_flag"] == "hello"

        listed = {e["name"]: e for e in server.get("/sdapi/v1/extensions").json()}
        # and, as in A1111, the built-in Lora extension (its lora / networks modules for extensions)
        assert set(listed) == {"preload_flag", "broken_syntax", "broken_import", "page_assets", "switched_off", "Lora"}
        assert listed["switched_off"]["enabled"] is False and listed["broken_syntax"]["enabled"] is True
        assert set(listed["page_assets"]) == {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"}

        # the disabled extension's routes were never added; the broken ones are named in the console
        assert server.get("/install-fails/ping").status_code == 404
        log = server.output()
        assert "[extensions] broken_syntax: " in log and "SyntaxError" in log
        assert "[extensions] broken_import: " in log and "broken_import needs a package that is not installed" in log

        # the preload flag reached the extension's on_ui_settings option
        assert server.get("/sdapi/v1/options").json()["preload_flag_option"] == "flag=hello"

        r = server.post("/sdapi/v1/txt2img", json={"prompt": "a red square", "steps": 2, "width": 64, "height": 64,
                                                    "seed": 1, "sampler_name": "Euler"})
        assert r.status_code == 200, r.text
        assert len(r.json()["images"]) == 1


# ---- the shims extensions import (modules.sd_models, hashes, sd_samplers, devices, images, infotext_utils)

@pytest.fixture
def bound_engine(ext_env, tiny_checkpoints, monkeypatch):
    """A real engine over the tiny checkpoints, as `modules.shared.engine` for the shims."""
    import webui
    from modules import shared

    opts = cmd_args.parse_args(["--data-dir", str(ext_env), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir)],
                               extra_preloads=())
    engine = webui.build_engine(opts)
    monkeypatch.setattr(shared, "engine", engine)
    return engine


def test_sd_models_over_the_checkpoint_registry(bound_engine, tiny_checkpoints):
    import hashlib as hl

    from modules import sd_models

    sd1 = Path(tiny_checkpoints.sd1)
    assert sorted(sd_models.checkpoints_list) == sorted(bound_engine.checkpoints.titles())
    info = sd_models.get_closet_checkpoint_match(sd1.name)
    assert info.name == sd1.name and info.filename == str(sd1) and info.name_for_extra == sd1.stem
    with open(sd1, "rb") as file:
        file.seek(0x100000)
        assert info.hash == hl.sha256(file.read(0x10000)).hexdigest()[:8]  # A1111's old short hash
    assert sd_models.get_closet_checkpoint_match("no-such-model") is None

    model = sd_models.reload_model_weights(info=info)  # loads and selects it, like the UI's picker
    assert model is bound_engine.models.model and bound_engine.models.info.name == sd1.name
    assert info.sha256 == hl.sha256(sd1.read_bytes()).hexdigest() and info.title == f"{sd1.name} [{info.sha256[:10]}]"
    assert bound_engine.options.get("sd_model_checkpoint") == info.title
    assert sd_models.select_checkpoint().title == info.title
    assert sd_models.checkpoints_list[info.title].filename == str(sd1)  # the title with its hash now
    assert sd_models.checkpoint_aliases.get(info.shorthash).title == info.title
    assert sd_models.model_data.sd_model is model

    # from a script running on the GPU worker: loads there directly instead of queueing behind itself
    other = next(i for i in sd_models.checkpoints_list.values() if i.filename != str(sd1) and i.name.endswith(".safetensors"))
    done = bound_engine.queue.submit("script", lambda: sd_models.reload_model_weights(info=other))
    assert done.result(timeout=300) is bound_engine.models.model
    assert bound_engine.models.info.filename == Path(other.filename)


def test_hashes_use_the_servers_cache(bound_engine, tiny_checkpoints):
    import hashlib as hl

    from modules import hashes

    sd1 = str(tiny_checkpoints.sd1)
    expected = hl.sha256(Path(sd1).read_bytes()).hexdigest()
    assert hashes.calculate_sha256(sd1) == expected
    bound_engine.checkpoints.hashes = type(bound_engine.checkpoints.hashes)(None)  # an empty cache
    assert hashes.sha256_from_cache(sd1, "checkpoint/tiny") is None
    assert hashes.sha256(sd1, "checkpoint/tiny") == expected
    assert hashes.sha256_from_cache(sd1, "checkpoint/tiny") == expected
    data = Path(sd1).read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert hashes.sha256(sd1, "lora/tiny", use_addnet_hash=True) == hl.sha256(data[8 + header:]).hexdigest()
    assert hashes.sha256(str(tiny_checkpoints.checkpoints_dir / "missing.safetensors"), "x") is None


def test_sd_samplers_and_devices(bound_engine):
    import torch

    from modules import devices, sd_samplers
    from modules.core import samplers

    assert [s.name for s in sd_samplers.all_samplers] == samplers.SAMPLER_NAMES == sd_samplers.visible_sampler_names()
    assert sd_samplers.samplers_map["k_dpmpp_2m"] == "DPM++ 2M"
    assert sd_samplers.find_sampler_config("k_euler_a").name == "Euler a"
    assert sd_samplers.get_sampler_and_scheduler("DPM++ 2M Karras", None) == ("DPM++ 2M", "Automatic")
    assert sd_samplers.get_sampler_and_scheduler("DPM++ 2M Karras", None, convert_automatic=False) == ("DPM++ 2M", "Karras")
    assert sd_samplers.get_sampler_and_scheduler("Euler", "Karras") == ("Euler", "Karras")
    assert sd_samplers.get_sampler_from_infotext({"Sampler": "no such sampler"}) == "Euler a"
    with pytest.raises(NotImplementedError):
        sd_samplers.create_sampler("Euler", None)

    assert devices.device == bound_engine.models.policy.device and devices.cpu == torch.device("cpu")
    assert devices.dtype == bound_engine.models.policy.unet_dtype and devices.dtype_vae == bound_engine.models.policy.vae_dtype
    devices.torch_gc()
    if devices.device.type == "cpu":
        with devices.autocast():
            assert not torch.is_autocast_enabled()
    with pytest.raises(devices.NansException):
        devices.test_for_nans(torch.full((2, 2), float("nan")), "unet")
    devices.test_for_nans(torch.zeros(2), "vae")


def test_images_save_image_grid_and_callbacks(ext_env):
    from PIL import Image

    from modules import images, script_callbacks

    picture = Image.new("RGB", (40, 24), "red")
    saved, txt = images.save_image(picture, str(ext_env / "out"), "", seed=1234, prompt="a red box",
                                   info="a red box\nSteps: 2, Sampler: Euler, Seed: 1234")
    path = Path(saved)
    assert path.parent.parent == ext_env / "out" and re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.parent.name)  # [date]
    assert path.name == "00000-1234.png" and txt is None
    with Image.open(path) as reread:
        assert images.read_info_from_image(reread)[0] == "a red box\nSteps: 2, Sampler: Euler, Seed: 1234"
        assert reread.size == (40, 24)
    again, _ = images.save_image(picture, str(ext_env / "out"), "", seed=1234)
    assert Path(again).name == "00001-1234.png"

    seen = []

    def before(params):
        params.filename = params.filename.replace("grid-", "renamed-")
        params.pnginfo["parameters"] = "changed info"

    def after(params):
        seen.append(params.filename)

    script_callbacks.on_before_image_saved(before)
    script_callbacks.on_image_saved(after)
    try:
        grid_file, _ = images.save_image(picture, str(ext_env / "grids"), "grid", seed=7, grid=True, extension="jpg",
                                         info="original")
    finally:
        script_callbacks.remove_callbacks_for_function(before)
        script_callbacks.remove_callbacks_for_function(after)
    assert Path(grid_file).name == "renamed-0000-7.jpg" and seen == [grid_file]
    with Image.open(grid_file) as reread:
        assert images.read_info_from_image(reread)[0] == "changed info"

    grid = images.image_grid([picture] * 5, rows=2)
    assert grid.size == (3 * 40, 2 * 24)
    assert grid.getpixel((3 * 40 - 1, 2 * 24 - 1)) == (255, 255, 255)  # the sixth cell is empty
    assert images.resize_image(1, picture, 24, 24).size == (24, 24)
    filled = images.resize_image(2, picture, 40, 40)
    assert filled.size == (40, 40) and filled.getpixel((20, 0)) == (255, 0, 0)  # the bands are filled
    assert images.FilenameGenerator(None, 5, "A cat, on a mat", picture).apply("[seed]-[prompt_words]-[width]-[nope]") \
        == "5-A cat on a mat-40-[nope]"
    assert images.sanitize_filename_part("a/b:c d") == "a_b_c_d"


def test_infotext_utils_parse_with_callbacks_and_the_old_name(ext_env):
    from modules import generation_parameters_copypaste, infotext_utils, script_callbacks

    assert generation_parameters_copypaste.parse_generation_parameters is infotext_utils.parse_generation_parameters
    text = "a cat\nNegative prompt: ugly\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 512x768, " \
           "Clip skip: 2, Wildcard prompt: \"a __animal__\""

    def pasted(infotext, params):
        params["Seen by extension"] = infotext.splitlines()[0]

    script_callbacks.on_infotext_pasted(pasted)
    try:
        res = infotext_utils.parse_generation_parameters(text, skip_fields=["Seed"])
    finally:
        script_callbacks.remove_callbacks_for_function(pasted)
    assert res["Prompt"] == "a cat" and res["Negative prompt"] == "ugly" and res["Steps"] == "20"
    assert (res["Sampler"], res["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert (res["Size-1"], res["Size-2"]) == ("512", "768") and "Seed" not in res
    assert res["Wildcard prompt"] == "a __animal__" and res["Seen by extension"] == "a cat"
    assert res["RNG"] == "GPU"  # A1111's default for an infotext without it
    assert infotext_utils.create_override_settings_dict(["Clip skip: 2", "Unknown: 1"]) == {"CLIP_stop_at_last_layers": 2}
    infotext_utils.register_paste_params_button(infotext_utils.ParamBinding("button", "txt2img"))
    assert infotext_utils.registered_param_bindings[-1].tabname == "txt2img"
    infotext_utils.registered_param_bindings.pop()
