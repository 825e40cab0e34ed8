"""Test 9: hostile HTTP input to the ingress and the admin API.

Bodies at and over the size limit (chunked too), slow senders, 10,000-deep JSON, malformed
request lines, paths and keys, then Hypothesis fuzzing of both ports. Every answer must be a
4xx (or a success), never a 5xx, a hang or a crash; a rejected request appends nothing to
the log; the broker's resident memory grows by less than 50 MB over the whole test.

Slow senders meet the read timeout (``--read-timeout``): a request whose body trickles in
past it gets 408 with a JSON body, one stalled mid-headers is closed, a slow but steady one
that finishes in time succeeds, and a slowloris of many such connections does not slow the
other requests down.
"""

# The tables of hostile inputs read best one per line, and the test is one long story.
# ruff: noqa: E501, PLR0915

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tests.broker.conftest import BrokerProcess, ServiceProcess, log_holds
from tests.reliability.conftest import sized

LIMIT = 256 * 1024  # --body-limit: small, so "at the limit" is cheap to send
READ_TIMEOUT = 5.0  # --read-timeout, seconds: short, so slow senders hit it soon
SLOWLORIS = 300  # connections trickling headers at once


# The broker's flags: a small body limit and a short read timeout. A failed attempt pauses at
# once: a fuzzed invocation whose handler fails (Counter/add with a string) would otherwise
# retry for minutes, and its appends would be counted against whichever refused request was
# in flight at the time.
LIMITED = ("--body-limit", str(LIMIT), "--read-timeout", str(READ_TIMEOUT),
           "--retry-max-attempts", "1")  # fmt: skip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def log_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in (data / "log").glob("*.seg"))


def raw(port: int, payload: bytes, *, timeout: float = 10.0) -> int:
    """Send bytes as they are; return the status of the answer (0: closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    if not head:
        return 0
    return int(head.split(b" ", 2)[1])


def read_to_eof(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer else 0


def trickle(port: int, head: bytes, body: bytes, pace: float) -> tuple[bytes, float]:
    """Send the headers, then the body one byte every ``pace`` seconds until the server
    answers or closes; return the answer (b"" if closed without one) and the seconds from the
    first byte to it."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT + 10) as s:
        t0 = time.monotonic()
        s.sendall(head)
        for b in body:
            s.settimeout(pace)
            try:
                answer = s.recv(65536)
            except TimeoutError:
                pass
            else:
                s.settimeout(READ_TIMEOUT + 10)
                return answer + read_to_eof(s), time.monotonic() - t0
            try:
                s.sendall(bytes([b]))
            except OSError:  # the server closed the connection while we were sending
                break
        s.settimeout(READ_TIMEOUT + 10)
        try:
            answer = read_to_eof(s)
        except ConnectionResetError:
            answer = b""
        return answer, time.monotonic() - t0


def steady(port: int, body: bytes, seconds: float) -> tuple[bytes, float]:
    """A slow but steady sender: the whole request spread evenly over ``seconds``."""
    req = (
        b"POST /Greeter/greet HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    pieces = [req[i : i + 8] for i in range(0, len(req), 8)]
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT + 10) as s:
        t0 = time.monotonic()
        for piece in pieces:
            s.sendall(piece)
            time.sleep(seconds / len(pieces))
        return read_to_eof(s), time.monotonic() - t0


class Checker:
    """Sends requests, records the status classes, and checks the log for rejected ones.

    Earlier accepted requests go on appending in the background (a delayed send's timer, a
    handler's answer), so a rejected request that saw the log grow is sent again once the
    broker has nothing left that appends by itself (``_settle``): only a request that
    appends again is flagged. Not "once the log has not grown for a moment": on a busy
    machine a handler's next entry can come after any such moment."""

    def __init__(self, broker: BrokerProcess, data: Path) -> None:
        self.broker = broker
        self.data = data
        self.statuses: dict[str, int] = {}
        self.rejected_appends = 0
        self.background_appends = 0  # the log grew during a rejection, not on its repeat
        self.server_errors: list[str] = []

    def _settle(self, within_s: float = 60.0) -> None:
        """Until nothing is appended but what a request brings: no command waits to be
        applied and no invocation runs, sleeps, backs off or is scheduled (GET /activity).
        Inboxed ones may stay: behind a fuzzed call paused on its key, they never start
        unless something above moves first."""
        deadline = time.monotonic() + within_s
        with httpx.Client(base_url=f"http://127.0.0.1:{self.broker.admin}", timeout=10) as c:
            while True:
                body = c.get("/activity").json()
                busy = {k: n for k, n in body["invocations"].items() if n and k != "inboxed"}
                if not busy and not body["log"]["unapplied"]:
                    return
                assert time.monotonic() < deadline, f"the broker keeps working: {body}"
                time.sleep(0.05)

    def note(self, what: str, status: int, before: int, again: Callable[[], int]) -> None:
        cls = f"{status // 100}xx" if status else "closed"
        self.statuses[cls] = self.statuses.get(cls, 0) + 1
        if status >= 500 or status == 0:
            self.server_errors.append(f"{status} for {what[:200]}")
        if 400 <= status < 500 and log_bytes(self.data) != before:
            self._settle()
            before = log_bytes(self.data)
            status = again()
            if 400 <= status < 500 and log_bytes(self.data) != before:
                self.rejected_appends += 1
                self.server_errors.append(f"appended to the log for a {status}: {what[:200]}")
            else:
                self.background_appends += 1
        assert self.broker.proc is not None and self.broker.proc.poll() is None, "broker died"

    def raw(self, port: int, payload: bytes, what: str) -> int:
        before = log_bytes(self.data)
        status = raw(port, payload)
        self.note(what, status, before, lambda: raw(port, payload))
        return status

    def http(self, c: httpx.Client, method: str, url: str, **kw: Any) -> int:
        def send() -> int:
            return c.request(method, url, **kw).status_code

        before = log_bytes(self.data)
        status = send()
        self.note(f"{method} {url}", status, before, send)
        return status


def test_hostile_http(
    tmp_path: Path, rng: random.Random, seed: int, figures: dict[str, Any]
) -> None:
    svc = ServiceProcess("tests.broker.restate_services")
    svc.start()
    data = tmp_path / "data"
    broker = BrokerProcess(data, *LIMITED)
    broker.start()
    assert broker.proc is not None
    ck = Checker(broker, data)
    ing, adm = broker.ingress, broker.admin
    try:
        with httpx.Client(timeout=30) as c:
            r = c.post(f"http://127.0.0.1:{adm}/deployments", json={"uri": svc.uri})
            assert r.status_code == 201, r.text
            ib = f"http://127.0.0.1:{ing}"
            assert c.post(f"{ib}/Greeter/greet", json="warm").status_code == 200
            rss0 = rss_mb(broker.proc.pid)

            # Sizes: a JSON string body of exactly LIMIT bytes, then one byte over.
            at = b'"' + b"a" * (LIMIT - 2) + b'"'
            assert ck.http(c, "POST", f"{ib}/Greeter/greet", content=at,
                           headers={"content-type": "application/json"}) == 200  # fmt: skip
            over = b'"' + b"b" * (LIMIT - 1) + b'"'
            assert ck.http(c, "POST", f"{ib}/Greeter/greet", content=over) == 413

            # Chunked: httpx sends a generator body with transfer-encoding: chunked.
            def chunks(body: bytes, n: int) -> Any:
                for i in range(0, len(body), n):
                    yield body[i : i + n]

            assert ck.http(c, "POST", f"{ib}/Greeter/greet", content=chunks(at, 7001),
                           headers={"content-type": "application/json"}) == 200  # fmt: skip
            assert ck.http(c, "POST", f"{ib}/Greeter/greet", content=chunks(over, 7001)) == 413
            big = b"x" * (4 * LIMIT)
            assert ck.http(c, "POST", f"{ib}/Greeter/greet", content=chunks(big, 65536)) == 413
            # A declared length far over the limit is refused before any body arrives.
            head = f"POST /Greeter/greet HTTP/1.1\r\nhost: x\r\ncontent-length: {10**12}\r\n\r\n"
            assert ck.raw(ing, head.encode(), "content-length 10**12") == 413

            # 10,000-deep JSON, as the input of a handler and as an admin body.
            quiet_from = log_bytes(data)  # from here to the paths, every request is refused
            deep = b"[" * 10_000 + b"]" * 10_000
            deep_obj = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
            for url in (f"{ib}/Greeter/greet", f"{ib}/Counter/deep/add"):
                for body in (deep, deep_obj):
                    st_ = ck.http(c, "POST", url, content=body,
                                  headers={"content-type": "application/json"})  # fmt: skip
                    assert 400 <= st_ < 500, (url, st_)
            for path in ("/deployments", "/subscriptions", "/kafka-clusters", "/query"):
                st_ = ck.http(c, "POST", f"http://127.0.0.1:{adm}{path}", content=deep,
                              headers={"content-type": "application/json"})  # fmt: skip
                assert 400 <= st_ < 500, (path, st_)

            # Malformed request lines, headers, lengths and chunk sizes.
            bad = [
                b"GARBAGE\r\n\r\n",
                b"GET / HTTP/9.9\r\n\r\n",
                b"GET /Greeter/greet HTTP/1.1\r\nno-colon-here\r\n\r\n",
                b"POST /Greeter/greet HTTP/1.1\r\ncontent-length: abc\r\n\r\n",
                b"POST /Greeter/greet HTTP/1.1\r\ncontent-length: -5\r\n\r\n\"hello\"",
                b"POST /Greeter/greet HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                b"POST /Greeter/greet HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n-1\r\nab\r\n0\r\n\r\n",
                b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
                b"GET / HTTP/1.1\r\n" + b"x-h: " + b"v" * 70_000 + b"\r\n\r\n",
                # Smuggling shapes: both framings at once, and two different lengths.
                b"POST /Greeter/greet HTTP/1.1\r\ncontent-length: 7\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                b'POST /Greeter/greet HTTP/1.1\r\ncontent-length: 7\r\ncontent-length: 2\r\n\r\n"hello"',
            ]  # fmt: skip
            for port in (ing, adm):
                for payload in bad:
                    st_ = ck.raw(port, payload, repr(payload[:80]))
                    assert 400 <= st_ < 500, (payload[:80], st_)

            # Checked per request above, and once more after group commit had time to run.
            time.sleep(0.3)
            assert log_bytes(data) == quiet_from, "a refused request was appended to the log"

            # Malformed paths and keys.
            paths = [
                "/", "//", "/%00", "/Greeter", "/Greeter/", "/Greeter/nope", "/Nope/x",
                "/Counter//add", "/Counter/%ff%fe/add", "/Counter/a/b/c/d/e", "/Counter/k/add/send?delay=x",
                "/Counter/k/add/send?delay=-1s", "/Counter/k/add/send?delay=99999999999999d",
                "/restate/invocation/garbage/output", "/restate/invocation/inv_1/attach",
                "/restate/awakeables/zzz/resolve", "/restate/workflow/Nope/x/attach",
                "/restate/invocation/" + "9" * 5000 + "/output", "/Greeter/greet/extra/bits",
            ]  # fmt: skip
            for path in paths:
                for method in ("GET", "POST", "DELETE"):
                    st_ = ck.http(c, method, ib + path, content=b'"x"')
                    assert st_ < 500, (method, path, st_)
            for header in ({"idempotency-key": "k" * 20_000}, {"idempotency-key": ""},
                           {"content-type": "text/\x7f"}):  # fmt: skip
                st_ = ck.http(c, "POST", f"{ib}/Counter/h/add", content=b"1", headers=header)
                assert st_ < 500, (header, st_)
            admin_paths = ["/invocations/garbage/cancel", "/invocations/inv_zz/kill", "/invocations?limit=zz",
                           "/invocations//purge", "/deployments/nope", "/services/Nope",
                           "/subscriptions/nope", "/kafka-clusters/nope", "/openapi/x"]  # fmt: skip
            for path in admin_paths:
                for method in ("GET", "POST", "PATCH", "DELETE"):
                    st_ = ck.http(c, method, f"http://127.0.0.1:{adm}{path}", content=b"{")
                    assert st_ < 500, (method, path, st_)

            # Slow senders: one byte every 20 ms while other requests go on.
            t0 = time.monotonic()
            with socket.create_connection(("127.0.0.1", ing), timeout=10) as slow:
                req = b'POST /Greeter/greet HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n"slow!"'
                for i, b in enumerate(req):
                    slow.sendall(bytes([b]))
                    if i % 20 == 0:
                        assert c.post(f"{ib}/Greeter/greet", json="other").status_code == 200
                    time.sleep(0.02)
                answer = slow.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
            figures["slow_sender_s"] = round(time.monotonic() - t0, 2)
            # Half-open connections that never finish their headers do not stop the others,
            # and the server closes them once the read timeout has passed.
            idle = [
                socket.create_connection(("127.0.0.1", p)) for p in (ing, adm) for _ in range(50)
            ]
            t_idle = time.monotonic()
            for s in idle:
                s.sendall(b"POST /Greeter/greet HTTP/1.1\r\ncontent-len")
            assert c.post(f"{ib}/Greeter/greet", json="meanwhile").status_code == 200
            assert c.get(f"http://127.0.0.1:{adm}/health").status_code == 200
            for s in idle:
                s.settimeout(READ_TIMEOUT + 10)
                assert read_to_eof(s) == b"", "a stalled connection got an answer"
                s.close()
            figures["half_open_connections"] = len(idle)
            figures["half_open_closed_after_s"] = round(time.monotonic() - t_idle, 2)
            assert time.monotonic() - t_idle < READ_TIMEOUT + 3

            # Read timeout: trickling bodies get 408 (JSON), stalled headers a closed
            # connection, both within the timeout plus a little; a slow but steady sender
            # that finishes in time succeeds. All at once, on both ports.
            slow_head = b"POST /Greeter/greet HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n"
            admin_head = b"POST /deployments HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n"
            chunked = b"POST /Greeter/greet HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n40\r\n"
            partial = b"POST /Greeter/greet HTTP/1.1\r\nhost: x\r\ncontent-le"
            body64 = b'"' + b"t" * 62 + b'"'
            with ThreadPoolExecutor(8) as pool:
                late = [
                    pool.submit(trickle, ing, slow_head, body64, 0.25),
                    pool.submit(trickle, ing, chunked, body64, 0.25),
                    pool.submit(trickle, adm, admin_head, body64, 0.25),
                ]
                stalled = [pool.submit(trickle, p, partial, b"", 1.0) for p in (ing, adm)]
                for fut in late:
                    answer, took = fut.result()
                    assert status_of(answer) == 408, answer[:300]
                    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
                    assert body["code"] == 408 and "read timeout" in body["message"], body
                    assert READ_TIMEOUT - 0.2 <= took <= READ_TIMEOUT + 2, took
                for fut in stalled:
                    answer, took = fut.result()
                    assert answer == b"", answer[:300]
                    assert READ_TIMEOUT - 0.2 <= took <= READ_TIMEOUT + 2, took
            answer, took = steady(ing, b'"steady-' + b"s" * 40 + b'"', READ_TIMEOUT * 0.6)
            assert status_of(answer) == 200, answer[:300]
            # Answered after the timed-out ones, so appended after anything they appended
            # (not the log's size: earlier requests' timers and answers append meanwhile).
            assert log_holds(data, b"steady-" + b"s" * 40)
            assert not log_holds(data, b"t" * 62), "a timed-out request was appended to the log"
            figures["read_timeout_s"] = READ_TIMEOUT
            figures["slow_bodies_408"] = len(late)
            figures["stalled_headers_closed"] = len(stalled)
            figures["steady_sender_s"] = round(took, 2)

            # Slowloris: many connections each send a header byte now and then, never
            # finishing; normal requests go on at their usual latency meanwhile, and every
            # slowloris connection is closed once the read timeout has passed.
            loris = [socket.create_connection(("127.0.0.1", ing)) for _ in range(SLOWLORIS)]
            stop_loris = threading.Event()

            def drip() -> None:
                for s in loris:
                    s.sendall(b"GET /restate/health HTTP/1.1\r\n")
                n = 0
                while not stop_loris.wait(0.2):
                    n += 1
                    for s in loris:
                        with contextlib.suppress(OSError):  # closed by the server: expected
                            s.sendall(b"x-drip-%d: 1\r\n" % n)

            t_loris = time.monotonic()
            dripper = threading.Thread(target=drip)
            dripper.start()
            lat: list[float] = []
            try:
                while time.monotonic() - t_loris < READ_TIMEOUT + 1:
                    t1 = time.monotonic()
                    r = c.post(f"{ib}/Greeter/greet", json=f"loris-{len(lat)}")
                    assert r.status_code == 200, r.text
                    lat.append(time.monotonic() - t1)
                for s in loris:
                    s.settimeout(READ_TIMEOUT + 10)
                    assert read_to_eof(s) == b"", "a slowloris connection got an answer"
            finally:
                stop_loris.set()
                dripper.join()
                for s in loris:
                    s.close()
            lat.sort()
            figures["slowloris_connections"] = SLOWLORIS
            figures["slowloris_all_closed_after_s"] = round(time.monotonic() - t_loris, 2)
            figures["requests_during_slowloris"] = len(lat)
            figures["latency_during_slowloris_ms"] = {
                "p50": round(lat[len(lat) // 2] * 1000, 1),
                "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
            }
            assert time.monotonic() - t_loris < READ_TIMEOUT + 4
            assert lat[len(lat) // 2] < 0.5, figures["latency_during_slowloris_ms"]

            # Volume: bodies at and over the limit, again and again; memory must not keep them.
            peak = rss0
            for i in range(40):
                unique = f'"{i:04d}{rng.getrandbits(64):016x}'.encode()
                at_i = unique + b"v" * (LIMIT - len(unique) - 1) + b'"'
                assert ck.http(c, "POST", f"{ib}/Greeter/greet", content=at_i,
                               headers={"content-type": "application/json"}) == 200  # fmt: skip
                assert ck.http(c, "POST", f"{ib}/Greeter/greet", content=chunks(big, 65536)) == 413
                peak = max(peak, rss_mb(broker.proc.pid))
            figures["limit_bodies_sent"] = 80

            # Property-based: random methods, paths built from the routes, bodies and headers.
            segment = st.one_of(
                st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
                .map(lambda s: quote(s, safe="")),
                st.sampled_from(["", "..", ".", "%", "%zz", "%00", "%ff", "inv_1", "a" * 300, "x;y", "%2F"]),
            )  # fmt: skip
            routes = st.sampled_from(
                ["{s}", "{s}/{s}", "Greeter/{s}", "Counter/{s}/{s}", "Counter/{s}/add",
                 "Counter/{s}/add/send", "Signup/{s}/run", "restate/invocation/{s}/output",
                 "restate/invocation/{s}/attach", "restate/awakeables/{s}/resolve",
                 "restate/awakeables/{s}/reject", "restate/workflow/{s}/{s}/output",
                 "deployments/{s}", "services/{s}", "services/{s}/handlers/{s}",
                 "invocations/{s}/cancel", "invocations/{s}/purge", "subscriptions/{s}",
                 "kafka-clusters/{s}", "query"]
            )  # fmt: skip
            json_values = st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                max_leaves=20,
            )  # fmt: skip
            bodies = st.one_of(
                st.binary(max_size=300),
                json_values.map(lambda v: __import__("json").dumps(v).encode()),
            )
            fuzzed = {"n": 0, "waiting": 0}

            def in_flight(path: str) -> bool:
                # A call that got no answer is fine only if the broker accepted it and waits on
                # the handler (a fuzzed input it fails on, retried or paused): an invocation of
                # that service and handler is then still open.
                segs = [unquote(x) for x in path.strip("/").split("/")]
                r = c.get(f"http://127.0.0.1:{adm}/invocations", params={"service": segs[0]})
                return any(
                    inv["handler"] == segs[-1] and inv["status"] != "completed"
                    for inv in r.json()["invocations"]
                )

            @hypothesis_seed(seed)
            @settings(max_examples=sized(400, 5000), deadline=None, database=None, derandomize=False,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(
                port=st.sampled_from([ing, adm]),
                method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
                route=routes,
                segs=st.lists(segment, min_size=4, max_size=4),
                query=st.sampled_from(["", "?delay=1ms", "?delay=zz", "?force=maybe", "?x=%ff"]),
                body=bodies,
                ikey=st.none() | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
                ctype=st.sampled_from(["application/json", "text/plain", "", "application/octet-stream"]),
            )  # fmt: skip
            def fuzz(port: int, method: str, route: str, segs: list[str], query: str,
                     body: bytes, ikey: str | None, ctype: str) -> None:  # fmt: skip
                path = "/" + route.replace("{s}", "{}").format(*segs[: route.count("{s}")])
                headers = {"content-type": ctype} if ctype else {}
                if ikey is not None:
                    headers["idempotency-key"] = ikey
                fuzzed["n"] += 1
                try:
                    st_ = ck.http(fz, method, f"http://127.0.0.1:{port}{path}{query}",
                                  content=body if method not in ("GET", "HEAD") else None,
                                  headers=headers)  # fmt: skip
                except httpx.TimeoutException:
                    assert port == ing and in_flight(path), ("no answer", method, port, path)
                    fuzzed["waiting"] += 1
                    return
                assert st_ < 500, (method, port, path, query, body[:100], st_)

            with httpx.Client(timeout=5) as fz:
                fuzz()
            figures["fuzzed_requests"] = fuzzed["n"]
            figures["fuzzed_calls_waiting_on_a_failing_handler"] = fuzzed["waiting"]
            assert c.post(f"{ib}/Greeter/greet", json="after").status_code == 200
            rss1 = rss_mb(broker.proc.pid)
            figures["rss_start_mb"] = round(rss0, 1)
            figures["rss_end_mb"] = round(rss1, 1)
            figures["rss_growth_mb"] = round(rss1 - rss0, 1)
            figures["rss_peak_mb"] = round(max(peak, rss1), 1)
    finally:
        err = broker.stop()
        svc.stop()
        figures["statuses"] = ck.statuses
        figures["rejected_but_appended"] = ck.rejected_appends
        figures["background_appends_during_a_rejection"] = ck.background_appends
        figures["server_errors"] = ck.server_errors[:20]
    assert not ck.server_errors, ck.server_errors[:20]
    assert figures["rss_growth_mb"] < 50
    assert "Traceback" not in err, err[-3000:]
