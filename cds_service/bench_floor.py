"""The benchmarks' yardstick: ``POST /_bench/floor``, registered only when CDS_BENCH_FLOOR is on.

It parses the JSON body and answers a fixed small body (no rules, no I/O) on the same server, with
the same middleware, as the hooks: ``make bench`` reports hook throughput as a ratio of it.
Kept out of the production routes so a production process never has it unless asked.
"""

from __future__ import annotations

import orjson
from flask import Flask, Response, request


def register_floor(app: Flask) -> None:
    @app.post("/_bench/floor")
    def bench_floor() -> Response:
        orjson.loads(request.get_data(cache=False))
        return Response(b'{"cards":[]}', mimetype="application/json")
