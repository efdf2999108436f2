"""`selfmm serve`: check the settings, listen, load the run, and run uvicorn until interrupted."""

from __future__ import annotations

import os
import socket
import sys

from ..checks import checked, integer, optional, path, text
from ..configuration import check_workers
from ..configuration import seed as seed_rule
from ..errors import SelfMMError
from ..extract.speech import SpeechSettings, SpeechUnavailable, speech_settings
from ..predict import Predictor
from ..runtime import device_name
from .app import DEFAULT_QUEUE, LIMITS, create_app
from .pool import ScoringPool, start_fork_server, stop_fork_server
from .security import allowed_hosts, check_token, is_loopback

SHUTDOWN_GRACE_S = 2


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise SelfMMError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def speech_or_none(asr_model: str | os.PathLike | None, language: str | None,
                   needed: bool) -> SpeechSettings | None:
    """The server's speech recognition: the packaged model or `asr_model`, checked now; None,
    with a note, when the `asr` extra is missing and nothing needs it (every request must then
    bring its transcript)."""
    try:
        speech = speech_settings(asr_model, language)
    except SpeechUnavailable as exc:
        if asr_model is not None or language is not None or needed:
            raise
        print(f"selfmm: note: no speech recognition ({exc}); every request needs a transcript",
              file=sys.stderr)
        return None
    speech.recogniser()  # the model loads and the language is checked before serving
    return speech


@checked(run=path, seed=optional(seed_rule), device=device_name, token=optional(text), host=text,
         port=integer(0, 65535), asr_model=optional(path), language=optional(text),
         max_upload_mb=LIMITS["max_upload_mb"], max_seconds=LIMITS["max_seconds"],
         queue_size=LIMITS["queue_size"], text_model=optional(text))
def serve(run: str | os.PathLike, *, seed: int | None = None, host: str = "127.0.0.1",
          port: int = 8000, workers: int | None = None, max_upload_mb: float = 200,
          max_seconds: float = 120, token: str | None = None, device: str = "auto",
          text_model: str | None = None, queue_size: int = DEFAULT_QUEUE,
          asr_model: str | os.PathLike | None = None, language: str | None = None) -> None:
    """Load `run` once and serve it until interrupted (`selfmm serve`). `token` defaults to
    $SELFMM_TOKEN; a host other than loopback needs one. Clips sent without a transcript have
    their words recognised (the `asr` extra; `asr_model` and `language` as in extract_clip)."""
    import uvicorn

    token = token or os.environ.get("SELFMM_TOKEN") or None
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    check_workers(workers)
    check_token(token)
    if not is_loopback(host):
        print(f"selfmm: warning: serving on {host}, reachable from other machines, over plain "
              "HTTP (put a TLS proxy in front of it); every request but /health needs the token",
              file=sys.stderr)
        if token is None:
            raise SelfMMError(f"`host` {host} is not loopback: pass `token` or set SELFMM_TOKEN")
    sock = _listen(host, port)
    pool: ScoringPool | None = None
    own_fork_server = False
    try:
        own_fork_server = start_fork_server()
        predictor = Predictor(run, seed=seed, device=device, text_model=text_model)
        predictor.tokenizer  # noqa: B018 - a run without a tokenizer fails here, not per request
        # A run trained on aligned files needs every clip's words timed.
        predictor.speech = speech_or_none(asr_model, language, needed=predictor.aligned)
        app = create_app(predictor, workers=workers, max_upload_mb=max_upload_mb,
                         max_seconds=max_seconds, token=token, queue_size=queue_size,
                         allowed_hosts=allowed_hosts(host))
        # The workers start before uvicorn takes over the signals: a Ctrl-C or SIGTERM while
        # they load the run (seconds) ends the command at once (uvicorn would wait for its
        # start-up to finish, then fail it with a traceback).
        pool = app.state.pool = ScoringPool(predictor, workers)
        pool.wait_ready()
        bound = sock.getsockname()[1]
        print(f"selfmm: serving {predictor.run} ({predictor.cfg.dataset}) at "
              f"http://{host}:{bound}/ with {workers} worker(s)", file=sys.stderr)
        # On Ctrl-C, requests still in flight get SHUTDOWN_GRACE_S to finish; then their
        # jobs are cut short with the workers (ScoringPool.close).
        config = uvicorn.Config(app, host=host, port=bound, timeout_keep_alive=5,
                                timeout_graceful_shutdown=SHUTDOWN_GRACE_S, log_level="info")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if pool is not None:
            pool.close()
        if own_fork_server:
            stop_fork_server()
        sock.close()
