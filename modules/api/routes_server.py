"""A1111's server control routes, served only with --api-server-stop (else /sdapi's JSON 404, as
A1111 has no such routes then):

- POST /sdapi/v1/server-stop: "Stopping."; the server closes and the process exits with status 0.
- POST /sdapi/v1/server-restart: "Restarting."; the process is replaced by a fresh one with the
  same command line. 501 where this process cannot restart itself (as A1111 without its launcher).
- POST /sdapi/v1/server-kill: "Killing."; the process ends at once with status 0.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from modules import restart


def add_routes(r: APIRouter) -> None:
    @r.post("/server-stop")
    def server_stop():
        if not restart.stop_server():
            return Response(status_code=501)
        return PlainTextResponse("Stopping.")

    @r.post("/server-restart")
    def server_restart():
        if not restart.is_restartable():
            return Response(status_code=501)
        restart.schedule_restart(delay=0.5)
        return PlainTextResponse("Restarting.")

    @r.post("/server-kill")
    def server_kill():
        restart.kill_program()
        return PlainTextResponse("Killing.")
