"""One culling cycle of one culler, timed, in its own process: ``python -m benchmarks.cull_runner``.

Each culler runs in a process of its own so that neither shares an event loop, an HTTP
client configuration (jupyterhub-idle-culler reconfigures tornado's AsyncHTTPClient
process-wide) or its CPU time with the other or with the benchmark. Prints one JSON line:
``{"culler": ..., "seconds": <cycle wall time>, "servers_culled": <ours only, else null>}``.

Both are run as zero-to-jupyterhub runs them by default: jupyterhub-idle-culler with
``--concurrency=10`` and the hub's default page size; ours with its defaults (two requests in
flight, 200 users per page). The token comes from ``JUPYTERHUB_API_TOKEN``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time


async def stock(api_url: str, token: str, timeout: float) -> dict:
    from jupyterhub_idle_culler import cull_idle

    started = time.monotonic()
    await cull_idle(
        url=api_url, api_token=token, inactive_limit=int(timeout),
        logger=logging.getLogger("jupyterhub-idle-culler"), concurrency=10,
    )
    return {"seconds": time.monotonic() - started, "servers_culled": None}


async def ours(api_url: str, token: str, timeout: float) -> dict:
    from hub_resilience.service.culler import Culler

    culler = Culler(api_url=api_url, api_token=token, timeout=timeout)
    try:
        report = await culler.run_cycle()
    finally:
        await culler.close()
    if report.error:
        raise RuntimeError(f"the cycle failed: {report.error}")
    return {"seconds": report.duration, "servers_culled": report.servers_culled}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cull_runner")
    parser.add_argument("culler", choices=["jupyterhub-idle-culler", "hub-resilience"])
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--timeout", type=float, required=True,
                        help="cull servers idle for longer than this many seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    token = os.environ["JUPYTERHUB_API_TOKEN"]
    run = stock if args.culler == "jupyterhub-idle-culler" else ours
    result = asyncio.run(run(args.api_url, token, args.timeout))
    print(json.dumps({"culler": args.culler, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
