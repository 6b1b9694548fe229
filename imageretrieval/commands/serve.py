"""`imageretrieval serve`: run the search API (and the built web app when present) with uvicorn."""

from __future__ import annotations

import logging
import os

from ..cli import CLIError, port_number, settings_error


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the FastAPI search service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--models", help="comma-separated models to load (default: every model with an index)")
    p.set_defaults(func=run)


def check_port_free(host: str, port: int) -> None:
    """Fail before the models load (uvicorn binds only after its start-up) when the port is taken."""
    import socket

    if not host:
        return  # every interface: uvicorn's own error says it if a port is taken
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CLIError(f"--host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds IPv6
        try:
            probe.bind(address)
        except OSError as exc:
            raise CLIError(f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port, or stop "
                           "what is using it") from None


def run(args, settings) -> int:
    import uvicorn
    from pydantic import ValidationError
    from uvicorn.config import LOGGING_CONFIG

    from retrievalapi.settings import ApiSettings

    check_port_free(args.host, args.port)
    # The API reads its own settings from the environment: pass the CLI's resolved values on.
    os.environ["WORKDIR"] = str(settings.workdir)
    os.environ["DATASET_ROOT"] = str(settings.dataset_root)
    os.environ["DEVICE"] = settings.device
    if args.models:
        os.environ["MODELS"] = args.models
    try:
        json_logs = ApiSettings().log_format == "json"  # the environment or .env, as the API reads it
    except ValidationError as exc:  # the API would refuse to start with it
        raise settings_error(exc, flags=False) from None
    if json_logs:  # the CLI configured the log before the API could: give its lines, and uvicorn's, JSON
        from retrievalapi.logs import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    # the API logs every request itself (with its id, model and timings): uvicorn's access log would repeat it
    uvicorn.run("retrievalapi.main:app", host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=10, access_log=False, log_config=None if json_logs else LOGGING_CONFIG)
    return 0
