"""An admission webhook that holds a request for a while, then denies it.

A mutating request keeps its API Priority and Fairness seat until admission is done, so a
create this webhook holds for N seconds keeps a one-seat priority level full for N seconds:
every other request of that level (creates, reads, watches) gets 429 meanwhile, whenever it
comes. That makes "the API server refuses everything for a while" a deterministic condition
that costs no CPU, unlike a client hammering the level and hoping to collide.

The webhook only sees what its configuration selects (tests/k8s/cluster.py registers it for
Secrets carrying HOLD_LABEL); the label's value is the number of seconds to hold. The object
is always denied, so nothing is stored and nothing needs cleaning up::

    python tests/k8s/seat_holder.py --address 127.0.0.1:8443 --cert c.pem --key k.pem

``GET /healthz`` answers 200; ``GET /holding`` the number of requests held right now and
held so far, as JSON. Only the standard library and tornado.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import sys
from typing import Any

import tornado.httpserver
import tornado.web

log = logging.getLogger("seat-holder")

#: The label that selects an object for holding; its value is the seconds to hold it.
HOLD_LABEL = "hub-resilience.test/hold-seat-seconds"
#: Below the webhook timeout the cluster registers (30 s, the API's maximum).
MAX_HOLD_SECONDS = 25.0
#: Starts the denial message, so a client can tell a held request from any other refusal.
DENIAL_PREFIX = "held an API seat for"


def hold_seconds(review: dict[str, Any]) -> float:
    """The hold asked for by the object's label, bounded to [0, MAX_HOLD_SECONDS]."""
    labels = (review.get("request", {}).get("object") or {}).get("metadata", {}).get("labels")
    try:
        seconds = float((labels or {}).get(HOLD_LABEL, 0))
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), MAX_HOLD_SECONDS)


def denial(review: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": review.get("request", {}).get("uid", ""),
            "allowed": False,
            "status": {"code": 403, "message": f"{DENIAL_PREFIX} {seconds:g}s (test webhook)"},
        },
    }


HOLDS = {"now": 0, "total": 0}


class HoldHandler(tornado.web.RequestHandler):
    async def post(self) -> None:
        review = json.loads(self.request.body or b"{}")
        seconds = hold_seconds(review)
        HOLDS["now"] += 1
        HOLDS["total"] += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            HOLDS["now"] -= 1
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(denial(review, seconds)))


class HoldingHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish(HOLDS)


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish("ok")


async def serve(address: str, cert: str, key: str) -> None:
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = tornado.web.Application([
            (r"/hold", HoldHandler),
            (r"/holding", HoldingHandler),
            (r"/healthz", HealthHandler),
        ])
    server = tornado.httpserver.HTTPServer(app, ssl_options=context)
    server.listen(int(port), address=host)
    log.info("holding on https://%s/hold", address)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="host:port to listen on (TLS)")
    parser.add_argument("--cert", required=True, help="PEM certificate for that address")
    parser.add_argument("--key", required=True, help="PEM private key of the certificate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args.address, args.cert, args.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
