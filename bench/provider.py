"""A stand-in channel provider and ranking model for benchmarks, in its own process.

POST /<channel>        verifies the Standard Webhooks signature (as a provider
                       would) and answers 200 with an id
POST /rank             a model answering at once with 10 items
POST /rank/slow        answers after 1 s (the deadline path)
POST /rank/error       answers 500
POST /rank/unsure      answers with confidence 0.05
POST /v1/traces        an OTLP/HTTP collector that takes the spans and drops them

.venv/bin/python -m bench.provider --port 8799 --secret whsec_...
"""

from __future__ import annotations

import argparse
import asyncio
import json

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channels.delivery import utc_now
from channels.signing import SignatureError, verify


def create(secret: str, items: list[str]) -> Starlette:
    ranking = {
        "items": [{"item_id": i, "score": 1 - n / 100} for n, i in enumerate(items)],
        "model": "bench-v1",
    }

    async def deliver(request: Request) -> Response:
        body = await request.body()
        try:
            msg_id = verify([secret], headers=request.headers, body=body, now=utc_now())
        except SignatureError as exc:
            return JSONResponse({"error": str(exc)}, status_code=401)
        return JSONResponse({"id": msg_id})

    async def rank(request: Request) -> Response:
        mode = request.path_params.get("mode", "")
        try:
            await request.body()
        except ClientDisconnect:  # the caller's deadline passed; it has moved on
            return Response(status_code=499)
        if mode == "slow":
            await asyncio.sleep(1)
        if mode == "error":
            return JSONResponse({"error": "model down"}, status_code=500)
        return Response(
            json.dumps({**ranking, "confidence": 0.05 if mode == "unsure" else 0.9}),
            media_type="application/json",
        )

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def traces(request: Request) -> Response:
        await request.body()
        return Response(b"", media_type="application/x-protobuf")

    return Starlette(
        routes=[
            Route("/healthz", health),
            Route("/rank", rank, methods=["POST"]),
            Route("/rank/{mode}", rank, methods=["POST"]),
            Route("/v1/traces", traces, methods=["POST"]),
            Route("/{channel}", deliver, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--items", default="", help="comma-separated item ids the model ranks")
    args = parser.parse_args()
    app = create(args.secret, [i for i in args.items.split(",") if i])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
