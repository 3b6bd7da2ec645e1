"""A pause that ends as soon as the process is told to stop.

Every loop that sleeps between rounds (the service's culler and parent watch, the simulated
users, the simulated servers' responder) waits with this, so none of them sits out its
sleep at shutdown.
"""
from __future__ import annotations

import asyncio


async def set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` is set within ``seconds``; returns as soon as it is."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        return False
    return True
