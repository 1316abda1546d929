"""Hostile and careless clients against a real `bentoml serve`: slow bodies, huge heads,
duplicate Content-Type, bodies refused by their shape. Every refusal has the one error body."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from support import Serve

from heimdall.training.examples import example_captures, request_body

pytestmark = pytest.mark.slow

ERROR_KEYS = {"error", "field", "received", "expected", "reason"}
GRACE_S = 8.0
MAX_HEADER_BYTES = 8192


@pytest.fixture(scope="module")
def serve(reference_tag, tmp_path_factory) -> Iterator[Serve]:
    env = {
        "HEIMDALL_BODY_GRACE_S": str(GRACE_S),
        "HEIMDALL_MAX_IN_FLIGHT": "4",
        "HEIMDALL_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
    }
    serve = Serve(reference_tag, tmp_path_factory.mktemp("hostile") / "serve.log", extra_env=env)
    yield serve
    serve.stop()


def _connect(serve: Serve) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", serve.port), timeout=30)
    s.settimeout(30)
    return s


def _response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers.get("content-length", 0)):
        body += s.recv(65536)
    return int(lines[0].split()[1]), headers, body


def _is_error_body(body: bytes, reason: str) -> bool:
    parsed = json.loads(body)
    return set(parsed) == ERROR_KEYS and parsed["reason"] == reason


def test_slow_bodies_hold_no_worker_and_are_cut_off_behind_the_pace(serve):
    body = request_body(example_captures())
    # 4 slots; 40 clients announce 200 kB and send one byte a second.
    slow = []
    for _ in range(40):
        s = _connect(serve)
        s.sendall(
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 200000\r\n\r\n{"
        )
        slow.append(s)
    answers = [serve.predict(body, use_cache=False).status_code for _ in range(10)]
    assert answers == [200] * 10
    for s in slow:  # all still connected and unanswered: they were there the whole time
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(1)
        s.setblocking(True)
    for s in slow:
        s.sendall(b" ")
    for s in slow:
        status, headers, payload = _response(s)
        assert status == 408 and headers["connection"] == "close" and _is_error_body(payload, "slow_body")
        s.close()


@pytest.mark.parametrize("pieces", [1, 20], ids=["whole", "trickled"])
def test_a_head_over_the_limit_gets_431(serve, pieces):
    filler = b"x-filler: " + b"a" * (2 * MAX_HEADER_BYTES) + b"\r\n"
    head = b"GET /readyz HTTP/1.1\r\nhost: x\r\n" + filler + b"\r\n"
    with _connect(serve) as s:
        step = len(head) // pieces + 1
        try:
            for i in range(0, len(head), step):
                s.sendall(head[i : i + step])
                time.sleep(0.01)
        except BrokenPipeError:  # refused before the rest arrived
            pass
        status, headers, payload = _response(s)
    assert status == 431 and _is_error_body(payload, "header_size")
    assert httpx.get(f"{serve.url}/readyz").status_code == 200  # the worker is fine


def test_a_head_under_the_limit_is_served(serve):
    filler = "a" * (MAX_HEADER_BYTES // 2)
    assert httpx.get(f"{serve.url}/readyz", headers={"x-filler": filler}).status_code == 200


def test_a_duplicate_content_type_gets_400_whichever_comes_first(serve):
    payload = json.dumps(request_body(example_captures())).encode()
    form, plain = "application/x-www-form-urlencoded", "application/json"
    for types in [(form, plain), (plain, form)]:
        headers = [("content-type", t) for t in types]
        r = httpx.post(f"{serve.url}/predict", content=payload, headers=headers)
        assert r.status_code == 400 and _is_error_body(r.content, "duplicate_header")


def test_bodies_are_refused_by_their_shape_with_one_error_body_and_one_log_line(serve):
    amplifying = b'{"captures": [{"station": "torino", "iq": [' + b"[]," * (5 * 1024 * 1024) + b"[]]}]}"
    r = httpx.post(f"{serve.url}/predict", content=amplifying, headers={"content-type": "application/json"})
    assert r.status_code == 400 and _is_error_body(r.content, "ragged_iq")
    assert r.json()["field"] == "captures[0].iq"
    bad = [
        ("/predict", b"{not json"),
        ("/predict", b'{"captures": "x"}'),
        ("/predict/batch", b'{"items": [{"captures": 1}]}'),
        ("/infer", b'{"items": []}'),
        ("/infer", b'{"items": [{"captures": [{"station": "atlantis", "iq": "AAAA"}]}]}'),
    ]
    for path, body in bad:
        r = httpx.post(f"{serve.url}{path}", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and set(r.json()) == ERROR_KEYS, (path, body, r.text)
    text = httpx.post(f"{serve.url}/predict", content=b"{}", headers={"content-type": "text/plain"})
    assert text.status_code == 415 and _is_error_body(text.content, "content_type")
    log = serve.log.read_text()
    assert "Traceback" not in log and " ERROR" not in log.replace("[ERROR]", " ERROR")
    assert log.count("refused POST") == len(bad) + 2
