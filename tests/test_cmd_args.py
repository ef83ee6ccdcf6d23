import argparse
import os

import pytest

from modules import cmd_args, paths, paths_internal


def test_defaults():
    opts = cmd_args.parse_args([])
    assert opts.port == 7860
    assert opts.listen is False and opts.server_name is None
    assert opts.api is False and opts.nowebui is False
    assert opts.precision == "autocast"
    assert opts.use_cpu == []
    assert opts.run_tests is None
    assert opts.lora_dir == os.path.join(paths_internal.models_path, "Lora")
    assert opts.embeddings_dir == os.path.join(paths_internal.data_path, "embeddings")
    assert opts.ui_settings_file == os.path.join(paths_internal.data_path, "config.json")


def test_common_flags():
    opts = cmd_args.parse_args([
        "--listen", "--port", "7861", "--api", "--use-cpu", "all", "--no-half", "--no-half-vae",
        "--precision", "full", "--xformers", "--opt-sdp-attention", "--ckpt-dir", "/ckpts",
        "--lora-dir", "/loras", "--medvram", "--log-level", "debug", "--cors-allow-origins",
        "http://a.example", "--timeout-keep-alive", "5", "--device-id", "1",
    ])
    assert opts.listen and opts.server_name == "0.0.0.0"
    assert opts.port == 7861
    assert opts.api and opts.use_cpu == ["all"]
    assert opts.no_half and opts.no_half_vae and opts.precision == "full"
    assert opts.xformers and opts.opt_sdp_attention and opts.medvram
    assert opts.ckpt_dir == "/ckpts" and opts.lora_dir == "/loras"
    assert opts.log_level == opts.loglevel == "DEBUG"
    assert opts.cors_allow_origins == "http://a.example"
    assert opts.timeout_keep_alive == 5 and opts.device_id == "1"


def test_server_name_wins_over_listen():
    assert cmd_args.parse_args(["--listen", "--server-name", "10.0.0.2"]).server_name == "10.0.0.2"


def test_a1111_loglevel_spelling():
    assert cmd_args.parse_args(["--loglevel", "WARNING"]).log_level == "WARNING"


def test_run_tests_takes_every_later_argument():
    opts = cmd_args.parse_args(["--skip-install", "--run-tests", "-k", "api", "-x", "--api"])
    assert opts.skip_install and not opts.api
    assert opts.run_tests == ["-k", "api", "-x", "--api"]
    assert cmd_args.parse_args(["--run-tests"]).run_tests == []


@pytest.mark.parametrize("argv", [["--no-such-flag"], ["--lis"], ["--port", "http"], ["--port", "70000"],
                                  ["--precision", "double"]])
def test_bad_flags_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cmd_args.parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: launch.py")
    assert "error:" in err


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        cmd_args.parse_args(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--listen", "--api", "--ckpt-dir", "--gradio-auth", "--run-tests", "--medvram"):
        assert flag in out


def test_extra_preloads_add_flags():
    def preload(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--my-extension-flag", type=int, default=3)

    assert cmd_args.parse_args(["--my-extension-flag", "5"], extra_preloads=[preload]).my_extension_flag == 5
    with pytest.raises(SystemExit):
        cmd_args.parse_args(["--my-extension-flag", "5"])


def test_parse_credentials():
    assert cmd_args.parse_credentials("alice:secret") == [("alice", "secret")]
    assert cmd_args.parse_credentials('"alice:se:cret, bob:pw2,"') == [("alice", "se:cret"), ("bob", "pw2")]
    assert cmd_args.parse_credentials("alice:a\nbob:b") == [("alice", "a"), ("bob", "b")]


@pytest.mark.parametrize("text", ["", "alice", "alice:", ":pw", "alice:pw,bob", " , "])
def test_malformed_credentials(text):
    with pytest.raises(ValueError):
        cmd_args.parse_credentials(text)


def test_credentials_are_never_echoed(capsys):
    with pytest.raises(SystemExit) as exited:
        cmd_args.parse_args(["--gradio-auth", "alice:ok,hunter2"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "credential #2" in err and "hunter2" not in err and "alice" not in err


def test_auth_flags_keep_the_raw_text():
    opts = cmd_args.parse_args(["--gradio-auth", "a:b", "--api-auth", "c:d:e"])
    assert opts.gradio_auth == "a:b"
    assert cmd_args.parse_credentials(opts.api_auth) == [("c", "d:e")]


def test_read_credentials_file(tmp_path):
    file = tmp_path / "logins.txt"
    file.write_text("alice:one\nbob:two,carol:th:ree\n", encoding="utf8")
    assert cmd_args.read_credentials_file(str(file)) == [("alice", "one"), ("bob", "two"), ("carol", "th:ree")]


def test_redact_argv():
    argv = ["--api", "--gradio-auth", "a:b", "--api-auth=c:d", "--port", "1"]
    assert cmd_args.redact_argv(argv) == ["--api", "--gradio-auth", "<hidden>", "--api-auth=<hidden>", "--port", "1"]


def test_compatibility_notes():
    notes = cmd_args.compatibility_notes(cmd_args.parse_args(["--share", "--disable-safe-unpickle"]))
    assert any("--share" in note and "offline" in note for note in notes)
    assert any("weights_only" in note for note in notes)
    assert cmd_args.compatibility_notes(cmd_args.parse_args([])) == []


def test_paths_are_a1111_names():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert paths.script_path == paths_internal.script_path == repo
    assert paths.data_path == repo  # no --data-dir in pytest's command line
    assert paths.models_path == os.path.join(repo, "models")
    assert paths.extensions_dir == os.path.join(repo, "extensions")
    assert paths.extensions_builtin_dir == os.path.join(repo, "extensions-builtin")
    assert paths.default_output_dir == os.path.join(repo, "outputs")
    assert paths.default_sd_model_file == os.path.join(repo, "models", "Stable-diffusion",
                                                       "easel-shapes-v1.safetensors")


def test_pre_parse_reads_data_and_models_dirs(tmp_path):
    pre = paths_internal._pre_parse(["--api", f"--data-dir={tmp_path}", "--models-dir", "m", "--run-tests",
                                     "--ckpt", "not-ours"])
    assert pre.data_dir == str(tmp_path) and pre.models_dir == "m" and pre.ckpt is None


def test_outdir_flags_become_the_engine_settings_for_both_kinds(tmp_path, tiny_checkpoints):
    """--outdir-txt2img-samples / --outdir-img2img-samples / ...-grids override the settings
    (regression: the img2img ones were parsed but never applied)."""
    import webui

    opts = cmd_args.parse_args(["--data-dir", str(tmp_path), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--outdir-txt2img-samples", "t2i", "--outdir-img2img-samples", "i2i",
                                "--outdir-img2img-grids", "i2i-grids"])
    engine = webui.build_engine(opts)
    info = engine.resolve_checkpoint(None)
    assert engine.settings_for(info, "txt2img").outdir_samples == tmp_path / "t2i"
    assert engine.settings_for(info, "img2img").outdir_samples == tmp_path / "i2i"
    assert engine.settings_for(info, "img2img").outdir_grids == tmp_path / "i2i-grids"


def test_data_dir_given_to_parse_args_moves_every_derived_path(tmp_path):
    """Regression: the settings file, embeddings and LoRA folders followed the --data-dir of the
    process's own command line only, so a server built with parse_args(["--data-dir", D]) (the
    tests') wrote its settings into the repository's config.json."""
    opts = cmd_args.parse_args(["--data-dir", str(tmp_path)], extra_preloads=[])
    assert opts.ui_settings_file == str(tmp_path / "config.json")
    assert opts.ui_config_file == str(tmp_path / "ui-config.json")
    assert opts.embeddings_dir == str(tmp_path / "embeddings")
    assert opts.lora_dir == str(tmp_path / "models" / "Lora")
    assert opts.hypernetwork_dir == str(tmp_path / "models" / "hypernetworks")
    models = tmp_path / "elsewhere"
    opts = cmd_args.parse_args(["--data-dir", str(tmp_path), "--models-dir", str(models), "--lora-dir", "/x/loras"],
                               extra_preloads=[])
    assert opts.lora_dir == "/x/loras" and opts.hypernetwork_dir == str(models / "hypernetworks")


def test_extension_preloads_read_the_settings_of_the_given_data_dir(tmp_path, monkeypatch):
    from modules import extensions

    read = []
    real = extensions.read_settings_file
    monkeypatch.setattr(extensions, "read_settings_file", lambda path: read.append(path) or real(path))
    cmd_args.extension_preloads(["--data-dir", str(tmp_path)])
    cmd_args.extension_preloads(["--ui-settings-file", str(tmp_path / "mine.json")])
    assert read == [str(tmp_path / "config.json"), str(tmp_path / "mine.json")]


def test_settings_saved_by_a_server_go_to_its_data_dir(tmp_path):
    import webui

    opts = cmd_args.parse_args(["--data-dir", str(tmp_path)], extra_preloads=[])
    engine = webui.build_engine(opts)
    engine.options.set("jpeg_quality", 61)
    engine.options.save()
    assert '"jpeg_quality": 61' in (tmp_path / "config.json").read_text()
