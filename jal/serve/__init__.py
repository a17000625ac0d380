"""`jal serve`: a labelling service in the browser. The person labels what the model asks for, round by round.

    jal serve --out PROJECT_DIR --data digits.npz --model mlp --acquire 10

    config     a project's settings (`ServeConfig`)
    data       its pool, from a dataset with or without pool labels
    render     a sample as a PNG
    state      the labels and rounds as immutable values, and the transitions allowed
    rounds     one round: a fresh model trained on the labels, the pool scored, the next samples chosen
    project    the project's files, its lock, the round training in the background
    views      what each endpoint answers
    app        the FastAPI service; static/ the page it serves

FastAPI and uvicorn (the `serve` extra) are imported by `app` and `serve` alone, so `import
jal` never needs them.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import sys

from jal.errors import JalError

EXTRA = "jal serve needs FastAPI and uvicorn: pip install 'jal[serve]' (in a clone: bin/setup serve)"


def serve(config, out: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          quiet: bool = False) -> None:  # fmt: skip
    """Opens or makes the project `out` of `config` (a `ServeConfig`) and serves it until interrupted.

    Off loopback a token is required: `token`, or one made here and printed with the URL.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise JalError(EXTRA) from None
    from jal.serve.app import create_app
    from jal.serve.project import open_project

    local = is_loopback(host)
    made = token is None and not local
    token = secrets.token_urlsafe(24) if made else token
    listener = _listen(host, port)  # before the data load: a port in use fails at once
    try:
        with open_project(out, config) as project:
            app = create_app(project, token=token, local=local)
            state = project.state
            if made or not quiet:
                name = f"[{host}]" if ":" in host else host
                link = f"http://{name}:{listener.getsockname()[1]}/" + (f"?token={token}" if token else "")
                print(f"jal serve: {out} ({len(state.labelled)} labels, round {state.round.number}) at {link}",
                      flush=True)  # fmt: skip
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
            try:
                server.run(sockets=[listener])
            except KeyboardInterrupt:  # uvicorn stops on Ctrl-C or SIGTERM, then passes the signal on
                pass
            dropped = project.job if project.training else None
    finally:
        listener.close()
    if not quiet:
        print(f"jal serve: stopped; every label given is in {out}", flush=True)
    if dropped is not None:
        # XLA's threads cannot be stopped, and an interpreter that exits under them aborts: leave at once.
        # The round commits nothing once the project is closed; it trains again from the same labels.
        print(f"jal serve: round {dropped.round} was training; start it again next time", file=sys.stderr, flush=True)
        os._exit(0)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` (0: any free port) and listening."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise JalError(f"--host {host}: not an address of this machine ({e}); give one to listen on") from None
    listener = socket.socket(family, kind, protocol)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        listener.bind(address)
        listener.listen(128)
    except OSError as e:
        listener.close()
        raise JalError(f"cannot listen on {host} port {port} ({e.strerror}); choose another --port or --host") from e
    return listener
