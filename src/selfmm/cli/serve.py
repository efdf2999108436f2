"""`selfmm serve`: a trained run over HTTP (the `serve` extra: FastAPI, uvicorn)."""

from __future__ import annotations

import argparse

from ..serve import serve as run_server


def serve(args: argparse.Namespace) -> int:
    run_server(args.run, seed=args.seed, host=args.host, port=args.port, workers=args.workers,
               max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds, token=args.token,
               device=args.device, text_model=args.text_model, asr_model=args.asr_model,
               language=args.language)
    return 0
