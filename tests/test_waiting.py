"""The shared pause: it ends when the event is set, not when the time is up."""
import asyncio

from hub_resilience.waiting import set_within


async def test_a_pause_ends_as_soon_as_the_event_is_set():
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    # A bound far below the pause's own: had it slept the 3,600 s, this would time out.
    assert await asyncio.wait_for(set_within(event, 3600), 30) is True


async def test_a_pause_that_runs_out_says_so():
    event = asyncio.Event()
    assert await set_within(event, 0.01) is False
    assert not event.is_set()


async def test_an_event_already_set_ends_the_pause_at_once():
    event = asyncio.Event()
    event.set()
    assert await asyncio.wait_for(set_within(event, 3600), 30) is True
