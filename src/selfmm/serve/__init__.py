"""`selfmm serve`: a trained run behind an HTTP API and a web page (the `serve` extra).

    server.py    serve(): the settings checked, the socket, uvicorn
    app.py       create_app(), the routes (module-level handlers reading app.state), lifespan
    upload.py    admission (Gate) and the multipart upload, with its limits held while reading
    pool.py      ScoringPool: the worker processes, restarted when one dies
    worker.py    what runs inside a worker: load the run, check a video's length, score it
    security.py  the token, the Host rule, same-origin posts, security headers
    schemas.py   the response bodies and the one-line problem

Requests are admitted at arrival, before their upload is read: at most `workers + queue_size`
are in flight (uploading, waiting or scoring), so memory and disk stay bounded, and the rest
get 503 with Retry-After at once.
"""

from __future__ import annotations

from .app import DEFAULT_QUEUE, create_app
from .pool import ScoringPool, WorkerDied
from .schemas import Health, Info, Limits, Problem, Score
from .security import TokenAuth, is_loopback
from .server import serve
from .upload import MB, Gate, receive_upload
from .worker import check_duration

__all__ = ["DEFAULT_QUEUE", "MB", "Gate", "Health", "Info", "Limits", "Problem", "Score",
           "ScoringPool", "TokenAuth", "WorkerDied", "check_duration", "create_app",
           "is_loopback", "receive_upload", "serve"]
