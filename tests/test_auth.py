"""Logins: --gradio-auth protects the UI, and the API too when no --api-auth is given."""

import requests

from tests.server import run_server


def test_ui_login_also_guards_the_api(tiny_checkpoints, tmp_path):
    with run_server(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--api", "--gradio-auth", "anna:s3cret:x",
                    "--ckpt", str(tiny_checkpoints.sd1), ready_path="/sdapi/v1/samplers",
                    auth=("anna", "s3cret:x")) as srv:
        assert srv.get("/sdapi/v1/samplers").status_code == 401
        assert srv.get("/sdapi/v1/samplers", auth=("anna", "wrong")).status_code == 401
        r = srv.get("/sdapi/v1/samplers", auth=("anna", "s3cret:x"))  # the password may contain ':'
        assert r.status_code == 200 and "Euler a" in [s["name"] for s in r.json()]

        session = requests.Session()
        assert session.get(srv.url + "/config", timeout=30).status_code == 401  # the UI needs a login
        bad = session.post(srv.url + "/login", data={"username": "anna", "password": "nope"}, timeout=30)
        assert bad.status_code >= 400
        good = session.post(srv.url + "/login", data={"username": "anna", "password": "s3cret:x"}, timeout=30)
        assert good.status_code == 200
        config = session.get(srv.url + "/config", timeout=30)
        assert config.status_code == 200 and "txt2img_prompt" in config.text
        assert "s3cret" not in srv.output()  # credentials never reach the log
