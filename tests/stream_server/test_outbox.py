"""The one bounded outbox every WebSocket API writes through (``stream_server.outbox``)."""

from __future__ import annotations

import asyncio

import pytest

from stream_server.actions import OutItem
from stream_server.connection import audio_bytes_of
from stream_server.outbox import CloseMarker, Outbox, OutboxFull
from stream_server.protocol import Error


def _audio(n: int) -> OutItem:
    return OutItem(0, b"\x00" * n, audio_s=0.02)


def _message(code: str) -> OutItem:
    return OutItem(None, Error(code, "a control message"))


async def test_items_come_out_in_order_and_the_writer_waits_for_the_next() -> None:
    box: Outbox[str] = Outbox(4)
    getter = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    assert not getter.done()  # nothing queued: the writer waits
    box.put("a")
    box.put("b")
    box.put(CloseMarker(1000, "done"))
    assert await getter == "a"
    assert [await box.get(), await box.get()] == ["b", CloseMarker(1000, "done")]
    assert len(box) == 0


def test_it_is_bounded() -> None:
    box: Outbox[str] = Outbox(2)
    box.put("a")
    box.put("b")
    with pytest.raises(OutboxFull):
        box.put("c")
    with pytest.raises(OutboxFull):  # a close marker counts too
        box.put(CloseMarker(1000, "done"))
    assert len(box) == 2


async def test_force_close_drops_the_queue_then_sends_last_then_closes() -> None:
    box: Outbox[str] = Outbox(2)
    box.put("a")
    box.put("b")
    box.force_close(1011, "internal_error", last="error message")  # even when full
    assert [await box.get(), await box.get()] == ["error message", CloseMarker(1011, "internal_error")]
    box.put("x")
    box.force_close(1011, "internal_error")
    assert await box.get() == CloseMarker(1011, "internal_error")


async def test_audio_bytes_are_counted_and_drop_audio_keeps_the_messages_in_order() -> None:
    box: Outbox[OutItem] = Outbox(8, audio_bytes_of)
    first, second = _message("first"), _message("second")
    box.put(_audio(100))
    box.put(first)
    box.put(_audio(50))
    box.put(second)
    assert box.audio_bytes == 150 and len(box) == 4
    assert await box.get() == _audio(100)
    assert box.audio_bytes == 50
    box.drop_audio()
    assert box.audio_bytes == 0
    assert [await box.get(), await box.get()] == [first, second]


def test_without_a_size_function_nothing_is_audio() -> None:
    box: Outbox[bytes] = Outbox(4)
    box.put(b"abc")
    box.drop_audio()
    assert len(box) == 1 and box.audio_bytes == 0
