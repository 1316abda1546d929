"""Admission in front of an ASGI app: body limits and pace, form bodies, duplicate Content-Type,
the in-flight cap counted on complete bodies, shedding connections."""

from __future__ import annotations

import asyncio

import httpx

from heimdall.serving.admission import REBALANCE_AT, Admission, Limits

ERROR_KEYS = {"error", "field", "received", "expected", "reason"}


class Held:
    """An ASGI app that reads the body and answers 200 once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.entered += 1
        await self.release.wait()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-len", str(len(body)).encode())]}
        )
        await send({"type": "http.response.body", "body": b"{}"})


def client(app, **limits) -> tuple[httpx.AsyncClient, list[str]]:
    refused: list[str] = []
    guarded = Admission(app, Limits(**{"max_bytes": 1000, "max_in_flight": 8, **limits}), refused.append)
    return httpx.AsyncClient(transport=httpx.ASGITransport(guarded), base_url="http://test"), refused


def test_bodies_over_the_limit_and_form_bodies_are_refused_before_the_app():
    async def scenario():
        app = Held()
        app.release.set()
        c, refused = client(app)
        async with c:
            assert (await c.post("/predict", content=b"x" * 1000)).headers["x-len"] == "1000"
            big = await c.post("/predict", content=b"x" * 1001)
            assert big.status_code == 413 and big.json()["received"] == "1001 bytes"
            assert set(big.json()) == ERROR_KEYS

            async def chunks():
                for _ in range(3):
                    yield b"x" * 400

            chunked = await c.post("/predict", content=chunks())  # no Content-Length
            assert chunked.status_code == 413 and chunked.json()["reason"] == "oversize"
            form = await c.post("/predict", data={"a": "1"})
            assert form.status_code == 415 and form.json()["reason"] == "form_body"
            assert form.json()["field"] == "content-type"
            assert (await c.post("/v1/predict/raw", data={"a": "1"})).status_code == 200  # reads raw bodies
            assert (await c.post("/infer", content=b"x" * 1001)).status_code == 413
        assert app.entered == 2 and refused == ["oversize", "oversize", "form_body", "oversize"]

    asyncio.run(scenario())


def test_a_full_worker_answers_503_at_once_and_sheds_connections_when_busy():
    async def scenario():
        app = Held()
        c, refused = client(app)
        async with c:
            held = [asyncio.ensure_future(c.post("/predict", content=b"{}")) for _ in range(8)]
            while app.entered < 8:
                await asyncio.sleep(0.001)
            extra = await asyncio.wait_for(c.post("/predict", content=b"{}"), 1)  # answered while 8 wait
            assert extra.status_code == 503 and extra.headers["retry-after"] == "1"
            assert "connection" not in extra.headers  # body read: the connection stays usable
            internal = await asyncio.wait_for(c.post("/infer", content=b"{}"), 1)  # every route counts
            assert internal.status_code == 503
            app.release.set()
            answers = await asyncio.gather(*held)
        assert [r.status_code for r in answers] == [200] * 8 and refused == ["overloaded"] * 2
        # 8 in flight > REBALANCE_AT: one answer closes its connection; the rate limit spares the rest.
        closes = [r.headers.get("connection") for r in answers]
        assert REBALANCE_AT < 8 and closes.count("close") == 1

    asyncio.run(scenario())


def test_a_duplicate_content_type_is_refused_whichever_comes_first():
    async def scenario():
        app = Held()
        app.release.set()
        c, refused = client(app)
        async with c:
            headers = [
                ("content-type", "application/x-www-form-urlencoded"),
                ("content-type", "application/json"),
            ]
            answer = await c.post("/predict", content=b"{}", headers=headers)
        assert answer.status_code == 400 and set(answer.json()) == ERROR_KEYS
        assert answer.json()["reason"] == "duplicate_header" and app.entered == 0

    asyncio.run(scenario())


def test_a_slow_body_holds_no_slot_and_is_refused_once_behind_the_pace():
    async def scenario():
        app = Held()
        c, refused = client(app, max_in_flight=1, grace_s=0.3, min_rate=100.0)
        trickling = asyncio.Event()

        async def trickle():
            for _ in range(50):  # 2 bytes every 0.1 s: 20 bytes/s against 100 required
                yield b"xx"
                trickling.set()
                await asyncio.sleep(0.1)

        async with c:
            slow = asyncio.ensure_future(
                c.post("/predict", content=trickle(), headers={"content-length": "100"})
            )
            await trickling.wait()
            normal = asyncio.ensure_future(c.post("/predict", content=b"{}"))
            while app.entered < 1:  # the one slot goes to the complete body, not the trickle
                await asyncio.sleep(0.01)
            app.release.set()
            assert (await asyncio.wait_for(normal, 1)).status_code == 200
            refused_slow = await asyncio.wait_for(slow, 5)
        assert refused_slow.status_code == 408 and set(refused_slow.json()) == ERROR_KEYS
        assert refused_slow.headers["connection"] == "close" and refused == ["slow_body"]
        assert app.entered == 1

    asyncio.run(scenario())
