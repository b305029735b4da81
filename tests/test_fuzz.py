"""Byte-level fuzzing of the prediction server as its own process (issue 18): hypothesis builds raw HTTP/1.1
requests -- random bytes, valid requests mutated byte by byte and spliced with hostile fragments, and JSON
documents over the real field names -- with fuzzed query strings and header values (any byte but CR and LF),
a valid credential in about a third of them, and sends each on its own connection. No endpoint may answer
5xx; the server must still be healthy afterwards, with no internal error counted. schemathesis keeps the
schema (test_serving.py)."""
import json
import math
import multiprocessing
import os
import re
import socket
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings as fuzz_settings, strategies as st

from conftest import EXAMPLE, ServerProcess

EXAMPLES = int(os.environ.get("MLOPS_TEST_FUZZ_EXAMPLES", "10000"))  # cases per endpoint (issue 18: at least 10,000)
API_KEY, ADMIN_TOKEN = "fuzz-key-7f3a", "fuzz-admin-c41d"
ENDPOINTS = {  # name: (method, path)
    "predict": (b"POST", b"/predict"), "feedback": (b"POST", b"/feedback"), "admin_reload": (b"POST", b"/admin/reload"),
    "health": (b"GET", b"/health"), "ready": (b"GET", b"/ready"), "version": (b"GET", b"/version"),
    "metrics": (b"GET", b"/metrics"), "openapi": (b"GET", b"/schema/openapi.json")}
INTERNAL = 'mlops_errors_total{kind="internal"}'


@pytest.fixture(scope="module")
def served(registry):
    "One server for the module, with API keys and an admin token; the valid bodies that the mutations start from."
    _, path, _ = registry
    server = ServerProcess(path, MLOPS_SERVE__API_KEYS=json.dumps([API_KEY, "second-key"]), MLOPS_SERVE__ADMIN_TOKEN=ADMIN_TOKEN)
    try:
        document = httpx.get(f"{server.url}/schema/openapi.json").json()
        body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        example = body["examples"]["one row"]["value"]["rows"][0]
        fields = sorted(_properties(body["schema"]))
        rows = [example, EXAMPLE["rows"][0]]
        answer = httpx.post(f"{server.url}/predict", json={"rows": rows}, headers={"X-API-Key": API_KEY})
        assert answer.status_code == 200, answer.text
        request_id = answer.json()["request_id"]
        columns = {c: [r.get(c) for r in rows] for c in rows[0]}
        bases = {
            "predict": [{"rows": [example]}, {"rows": rows}, {"columns": columns}],
            "feedback": [{"request_id": request_id, "label": 1}, {"request_id": request_id, "label": False, "row": 1},
                         {"request_id": "0"*32, "label": 0, "row": 0}],
            "admin_reload": [{}, None], "health": [None], "ready": [None], "version": [None], "metrics": [None], "openapi": [None]}
        yield server, fields, {k: [b"" if b is None else json.dumps(b).encode() for b in v] for k, v in bases.items()}
    finally: server.stop()


def _properties(schema:dict) -> set[str]:
    "Every property name anywhere in a JSON schema."
    found = set()
    def walk(node):
        if isinstance(node, dict):
            found.update(node.get("properties", {}))
            for v in node.values(): walk(v)
        elif isinstance(node, list):
            for v in node: walk(v)
    walk(schema)
    return found


# Hostile fragments spliced into valid bodies, as raw JSON text (or not JSON at all).
HOSTILE = [b"2361183241434822606848", b"-18446744073709551616", b"9223372036854775808", b"1e400", b"-1e400", b"4.9e-325",
           b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"null", b"true", b"false", b'""', b"[]", b"{}", b"[null]", b'{"":null}',
           b'"\\ud800"', b'"\\udfff\\ud800"', b'"\\u0000"', b'"\xff\xfe"', b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\x80", b"\x00",
           b'"2024-02-30"', b'"2024-05-31T25:61:00+99:00"', b'"0001-01-01T00:00:00-23:59"', b'"9999-12-31T23:59:59.9999999+00:00"',
           b"1" * 5000, b"9" * 400 + b".5", b"0." + b"0" * 400 + b"1", b"-0", b"1E+308", b"0x10", b"01", b"1.", b".5", b"+1",
           b"\xef\xbb\xbf", b",", b":", b'"', b"\\", b"/*", b"]", b"}"]
SIZES = [10, 100, 1000, 10_000, 100_000, 700_000]
SIZED = [lambda n: b"[" * n + b"]" * n, lambda n: b"[" * n,  # deep nesting, closed or not
         lambda n: b'{"a":' * n + b"1" + b"}" * n, lambda n: b'"' + b"x" * n + b'"', lambda n: b'"' + b"\\u00e9" * n + b'"',
         lambda n: b'"' + b"\xc3\xa9" * n + b'"', lambda n: b"[" + b"1," * n + b"1]", lambda n: b"1" * n]
HOSTILE_ST = st.sampled_from(HOSTILE) | st.sampled_from(HOSTILE) | st.builds(lambda f, n: f(n), st.sampled_from(SIZED), st.sampled_from(SIZES))
RAW = "\x00RAW\x00"  # a placeholder value, replaced by raw bytes after encoding
QUERY_VALUES = [b"true", b"false", b"1", b"0", b"True", b"yes", b"", b"%00", b"%ff", b"2", b"null", b"[]", b"t%C3%A9"]
EXTRA_HEADERS = [b"Accept", b"Accept-Encoding", b"Accept-Language", b"User-Agent", b"Cookie", b"X-Request-Id", b"Origin",
                 b"Content-Encoding", b"X-Forwarded-For", b"Range", b"If-None-Match", b"Expect", b"X-Model-Version"]


def _percent(b:bytes) -> bytes: return b"".join(b"%%%02X" % c for c in b)
def _no_newline(b:bytes) -> bytes: return b.replace(b"\r", b"").replace(b"\n", b"")


# Header values: any bytes but CR and LF -- mostly visible ASCII and Latin-1 (which HTTP allows), some UTF-8, some control bytes, some long.
VISIBLE = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c > 0x1F and c != 0x7F))
HEADER_VALUES = st.one_of(VISIBLE, VISIBLE, st.text(max_size=20).map(lambda t: _no_newline(t.encode("utf-8"))), st.binary(max_size=40).map(_no_newline),
                          st.builds(lambda b, n: _no_newline(b * n), st.binary(min_size=1, max_size=8), st.integers(100, 1500)))


@st.composite
def credential(draw, secret:bytes, prefix:bytes=b"") -> bytes|None:
    "The valid credential in a third of the cases; otherwise none, fuzzed bytes, or the valid one altered."
    if draw(st.sampled_from([True, False, False])): return prefix + secret
    return draw(st.one_of(st.none(), HEADER_VALUES, HEADER_VALUES.map(lambda v: prefix + v),
                          st.sampled_from([secret, prefix + secret + b" ", prefix + secret.upper(), prefix + secret[:-1], prefix + secret + b"\x00",
                                           prefix + secret + "é".encode(), prefix + secret + b"\xff", b"bearer " + secret, b"Basic " + secret])))


KEYS, TOKENS = credential(API_KEY.encode()), credential(ADMIN_TOKEN.encode(), b"Bearer ")


QUERY_PAIRS = st.lists(st.tuples(st.sampled_from([b"explain", b"features", b"explain", b"features", b"x", b"", b"explain[]"]),
                                  st.sampled_from(QUERY_VALUES) | st.binary(max_size=8).map(_percent)), min_size=1, max_size=4)
ODD_QUERIES = [b"?explain=true&features=true", b"?explain=true&explain=false", b"?features=1&features=maybe",
               b"?explain", b"?&&&", b"?explain=" + b"t" * 5000, b"#fragment", b"?%", b"?%zz"]


@st.composite
def queries(draw) -> bytes:
    kind = draw(st.sampled_from(["none"] * 3 + ["valid"] * 3 + ["pairs"] * 2 + ["raw", "percent", "odd"]))
    if kind == "none": return b""
    if kind == "valid": return draw(st.sampled_from([b"?explain=true", b"?features=true", b"?explain=1&features=0", b"?explain=false&features=1"]))
    if kind == "pairs": return b"?" + b"&".join(k + b"=" + v for k, v in draw(QUERY_PAIRS))
    if kind == "raw": return b"?" + draw(st.binary(max_size=40)).replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")
    if kind == "percent": return b"?" + _percent(draw(st.binary(max_size=40)))
    return draw(st.sampled_from(ODD_QUERIES))


QUERIES = queries()


def request_strategy(endpoint:str, port:int, fields:list[str], bases:list[bytes]):
    "Raw HTTP/1.1 requests to `endpoint` (the strategies are built once: building them per case costs more than sending it)."
    names = st.sampled_from(fields)
    scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | names
               | st.sampled_from([0, 1, -1, 2**63, -2**63 - 1, 2**64, 10**30, 1e308, "", "B6", "JFK", "2024-05-31"]))
    keys = names | st.sampled_from(["rows", "columns", "request_id", "label", "row"]) | st.text(max_size=10)
    values = st.recursive(scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5), max_leaves=12)
    documents = st.fixed_dictionaries({}, optional={"rows": st.lists(st.dictionaries(names, scalars, max_size=30), max_size=3),
                                                    "columns": st.dictionaries(names, st.lists(scalars, max_size=3), max_size=30),
                                                    "request_id": scalars, "label": scalars, "row": scalars}) | values
    parsed = [json.loads(b) if b else None for b in bases]

    @st.composite
    def structured(draw) -> bytes:
        "A JSON document: one of the endpoint's valid bodies with fields changed, dropped, added or duplicated, or any JSON over the real names."
        document = json.loads(json.dumps(draw(st.sampled_from(parsed))))  # a copy
        if not isinstance(document, dict) or draw(st.integers(0, 4)) == 0: document = draw(documents)
        else:
            for _ in range(draw(st.integers(1, 4))):
                target = document
                if isinstance(document.get("rows"), list) and document["rows"] and draw(st.booleans()):
                    target = document["rows"][draw(st.integers(0, len(document["rows"]) - 1))]
                elif isinstance(document.get("columns"), dict) and draw(st.booleans()): target = document["columns"]
                if not isinstance(target, dict): break
                key = draw(st.sampled_from(sorted(target)) if target and draw(st.booleans()) else keys)
                action = draw(st.integers(0, 6))
                if action == 0: target.pop(key, None)
                elif action == 1: target[key] = RAW  # raw bytes below
                elif action == 2 and isinstance(document.get("rows"), list) and len(document["rows"]) < 4:
                    document["rows"] = document["rows"] * draw(st.sampled_from([0, 2, 500, 1001]))
                elif action == 3 and isinstance(document.get("columns"), dict) and document["columns"]:
                    document["columns"][draw(st.sampled_from(sorted(document["columns"])))] = draw(st.lists(scalars, max_size=4) | scalars)
                else: target[key] = draw(values)
        text = json.dumps(document, allow_nan=True).encode()
        placeholder = json.dumps(RAW).encode()
        if placeholder in text:
            fragment = draw(HOSTILE_ST)
            if text.count(placeholder)*len(fragment) > 3_000_000: fragment = draw(st.sampled_from(HOSTILE[:24]))  # a row repeated 1,001 times
            text = text.replace(placeholder, fragment)
        if draw(st.integers(0, 5)) == 0:  # a duplicate key, before the original or after it
            at = text.find(b"{", draw(st.integers(0, max(0, len(text) - 1))))
            if at >= 0: text = text[:at + 1] + json.dumps(draw(keys)).encode() + b":" + draw(HOSTILE_ST | st.just(b"1")) + b"," + text[at + 1:]
        return text

    @st.composite
    def mutated(draw) -> bytes:
        "One of the endpoint's valid bodies with bytes flipped, inserted, deleted, or hostile fragments spliced in."
        body = bytearray(draw(st.sampled_from(bases)) or b'{"rows": []}')
        for _ in range(draw(st.integers(1, 6))):
            at = draw(st.integers(0, len(body)))
            op = draw(st.integers(0, 5))
            if op == 0 and at < len(body): body[at] ^= 1 << draw(st.integers(0, 7))
            elif op == 1: body[at:at] = draw(st.binary(min_size=1, max_size=8))
            elif op == 2: del body[at:at + draw(st.integers(1, 16))]
            elif op == 3:  # the value after a colon replaced by a hostile fragment
                colon = body.find(b":", at)
                if colon >= 0:
                    end = min([i for i in (body.find(b",", colon), body.find(b"}", colon)) if i >= 0], default=len(body))
                    body[colon + 1:end] = draw(HOSTILE_ST)
            elif op == 4: body[at:at] = draw(HOSTILE_ST)
            else: del body[at:]  # cut short
        return bytes(body)

    valid = st.sampled_from(bases) | st.builds(  # as sent, or written another way
        lambda d, indent, ascii, pad: pad + json.dumps(d, indent=indent, ensure_ascii=ascii).encode() + pad,
        st.sampled_from(parsed), st.sampled_from([None, 0, 2, "\t"]), st.booleans(), st.sampled_from([b"", b" ", b"\n", b"\t\r\n "]))
    body_kinds = {"random bytes": st.binary(max_size=300), "empty": st.just(b""), "valid": valid, "mutated": mutated(), "structured": structured(),
                  "around serve.max_body_bytes": st.sampled_from([1_999_999, 2_000_001, 3_000_000]).map(lambda n: b"x" * n)}
    bodies = st.sampled_from(["random bytes"] * 2 + ["empty"] + ["valid"] * 3 + ["around serve.max_body_bytes"] + ["mutated"] * 4 + ["structured"] * 4
                             ).flatmap(body_kinds.get)
    content_types = st.sampled_from([b"application/json", b"application/json", b"application/json; charset=latin-1", b"text/plain",
                                     b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x", None]) | HEADER_VALUES
    methods = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"FOO", b"get"])
    extras = st.lists(st.tuples(st.sampled_from(EXTRA_HEADERS), HEADER_VALUES), max_size=3)
    framings = st.sampled_from(["length"] * 8 + ["chunked", "none", "short"])
    hostile_framings = st.sampled_from(["length", "chunked", "none", "short", "bad length", "two lengths"])
    bad_lengths = st.sampled_from([b"-1", b"1e3", b"0x10", b"99999999999999999999", b" 1", b""]) | HEADER_VALUES
    method, path = ENDPOINTS[endpoint]

    @st.composite
    def requests(draw) -> bytes:
        # One request in eight is malformed HTTP (control bytes in header values or non-ASCII in the target, unknown methods, bad
        # lengths): uvicorn answers those itself. The others keep to what HTTP allows (any byte but controls in values) to reach the app.
        malformed = draw(st.integers(0, 7)) == 0
        verb = draw(methods) if draw(st.integers(0, 9)) == 0 else method
        target = path + draw(QUERIES)
        body = draw(bodies) if verb != b"GET" or draw(st.integers(0, 3)) == 0 else b""
        headers = [(b"Host", b"127.0.0.1:%d" % port if draw(st.integers(0, 9)) else draw(HEADER_VALUES))]
        content_type = draw(content_types)
        if content_type is not None: headers.append((b"Content-Type", content_type))
        key, authorization = draw(KEYS), draw(TOKENS)
        if key is not None:
            headers.append((b"X-API-Key", key))
            if draw(st.integers(0, 9)) == 0: headers.append((b"X-API-Key", draw(HEADER_VALUES)))  # twice
        if authorization is not None: headers.append((b"Authorization", authorization))
        headers += draw(extras)
        framing = draw(hostile_framings if malformed else framings)
        if framing == "length" or (framing == "none" and body): headers.append((b"Content-Length", b"%d" % len(body)))
        elif framing == "short" and body: headers.append((b"Content-Length", b"%d" % (len(body) // 2)))
        elif framing == "bad length": headers.append((b"Content-Length", draw(bad_lengths)))
        elif framing == "two lengths": headers += [(b"Content-Length", b"%d" % len(body)), (b"Content-Length", b"%d" % (len(body) + 1))]
        elif framing == "chunked":
            headers.append((b"Transfer-Encoding", b"chunked"))
            cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
            pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if b > a]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        headers.append((b"Connection", b"close"))
        if not malformed:
            verb = verb if verb.isupper() and verb != b"FOO" else method
            target = bytes(c for c in target if 0x20 < c < 0x7F)
            headers = [(k, bytes(c for c in v if c > 0x1F and c != 0x7F or c == 0x09)) for k, v in headers]
        return verb + b" " + target + b" HTTP/1.1\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + body

    return requests()


def exchange(port:int, request:bytes, timeout:float=30.0) -> tuple[int|None, bytes]:
    "Send `request` on a new connection and read until the server closes it: the answer's status (None: closed without one; -1: none within `timeout`) and its bytes."
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try: s.sendall(request)
        except (BrokenPipeError, ConnectionResetError): pass  # answered (400, 413) and closed before the whole body was sent
        try:
            while chunk := s.recv(1 << 16): answer += chunk[:max(0, 65536 - len(answer))]
        except ConnectionResetError: pass
        except TimeoutError: return -1, answer
    found = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return (int(found.group(1)) if found else None), answer


def _shown(b:bytes, limit:int=600) -> str:
    return repr(b[:limit]) + (f"... ({len(b):,} bytes)" if len(b) > limit else "")


def _traceback(server:ServerProcess, answer:bytes, sent:float, answered:float) -> tuple[str, str, str]:
    """The server's log of the 500 in `answer` (found by the reference it names, else what was logged meanwhile): its traceback, the
    exception's type with the project's line that raised it (what tells one fault from another), and the exception."""
    reference, log = re.search(rb"internal error ([0-9a-f]{12})", answer), server.log()
    if reference and (at := log.find(f"internal error {reference.group(1).decode()}")) >= 0: log = log[log.rfind("\n", 0, at) + 1:]
    else: log = server.log(sent - 0.05, answered + 0.5)
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Traceback")), None)
    if start is None: return log[:3000], "", (lines[0] if lines else "")[:200]
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "Traceback", "During", "The above"))), len(lines) - 1)
    where = [m for line in lines[start:end] if (m := re.search(r'mlops_nb/(\w+\.py)", line (\d+), in (\w+)', line))]
    kind = lines[end].split(":")[0] + (f" at {where[-1].group(1)}:{where[-1].group(2)} in {where[-1].group(3)}" if where else "")
    return "\n".join(lines[max(0, start - 1):end + 1])[-6000:], kind, lines[end][:300]


IN_FLIGHT = 2  # requests on their way, per fuzzing process, while the next one is generated


def fuzz_part(endpoint:str, port:int, fields:list[str], bases:list[bytes], examples:int, part:int) -> dict:
    """In a fuzzing process: `examples` cases for `endpoint` from seed (endpoint, part), each sent and answered. What was answered, and
    the failures (5xx or no answer within 30 s; the first 300): request (the first 200 kB), its length, the answer, when it was sent and answered."""
    statuses, failures, lock, slots = Counter(), [], threading.Lock(), threading.BoundedSemaphore(IN_FLIGHT)
    slowest = [0.0, b""]
    credential = b"\r\nAuthorization: Bearer %s\r\n" % ADMIN_TOKEN.encode() if endpoint == "admin_reload" else b"\r\nX-API-Key: %s\r\n" % API_KEY.encode()

    def send(request:bytes):
        try:
            sent = time.time()
            status, answer = exchange(port, request)
            took = time.time() - sent
        finally: slots.release()
        uvicorn = status == 400 and answer.endswith(b"Invalid HTTP request received.")
        head = request.partition(b"\r\n\r\n")[0] + b"\r\n"
        with lock:
            statuses["with a valid credential"] += credential in head
            statuses["400 from uvicorn" if uvicorn else "no answer" if status is None else status] += 1
            if took > slowest[0]: slowest[:] = took, request
            if (status == -1 or (status or 0) >= 500) and len(failures) < 300:
                failures.append((request[:200_000], len(request), answer[:4000], sent, sent + took))

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        @fuzz_settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @seed(zlib.crc32(f"{endpoint}/{part}".encode()))
        @given(request_strategy(endpoint, port, fields, bases))
        def fuzz(request):
            slots.acquire()
            pool.submit(send, request)
        fuzz()
    return {"statuses": statuses, "failures": failures, "slowest": tuple(slowest)}


@pytest.fixture(scope="module")
def fuzzers():
    "Processes that generate and send the cases: generating costs more than answering, and the machine has more than one core."
    processes = max(1, min(4, len(os.sched_getaffinity(0))))
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool: yield pool, processes


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_fuzzed_bytes_get_no_5xx(served, fuzzers, endpoint):
    "EXAMPLES (10,000) fuzzed requests to the endpoint: none is answered 5xx, the server lives on and counts no internal error."
    server, fields, bases = served
    pool, processes = fuzzers
    internal_before = server.metric(INTERNAL)
    started = time.time()
    parts = [pool.submit(fuzz_part, endpoint, server.port, fields, bases[endpoint], math.ceil(EXAMPLES/processes), i) for i in range(processes)]
    results = [p.result() for p in parts]
    statuses = sum((r["statuses"] for r in results), Counter())
    credentialed = statuses.pop("with a valid credential")
    sent, slowest = sum(statuses.values()), max(r["slowest"] for r in results)
    print(f"\n{endpoint}: {sent:,} requests in {time.time() - started:.0f} s, {credentialed/sent:.0%} with a valid credential; answers {dict(sorted(statuses.items(), key=lambda kv: str(kv[0])))}; "
          f"slowest {slowest[0]:.2f} s: {_shown(slowest[1], 300)}")
    assert sent >= EXAMPLES, f"only {sent:,} of {EXAMPLES:,} cases were sent"

    time.sleep(0.5)  # the last log lines reach the reader thread
    failures, kinds = [f for r in results for f in r["failures"]], {}  # by status, exception type and the project's line that raised it
    for request, length, answer, sent_at, answered_at in failures:
        trace, where, exception = _traceback(server, answer, sent_at, answered_at)
        kind = (answer[9:12].decode(errors="replace") or "no answer", where)
        count, shortest = kinds.get(kind, (0, None))
        kinds[kind] = (count + 1, shortest if shortest and shortest[1] <= length else (request, length, answer, trace, exception))
    report = "\n\n".join(f"{count} times {status}: {where}; the shortest request ({length:,} bytes): {_shown(request)}\nanswered {_shown(answer, 400)}\n"
                         f"server log:\n{trace}" for (status, where), (count, (request, length, answer, trace, exception)) in kinds.items())
    assert not failures, f"{sum(statuses[s] for s in statuses if isinstance(s, int) and (s >= 500 or s == -1))} requests to {endpoint} answered 5xx " \
                         f"(or not within 30 s), of {len(kinds)} kinds (by the server's traceback):\n\n{report}"
    assert server.proc.poll() is None, server.log()[-20000:]
    assert httpx.get(f"{server.url}/health").status_code == 200
    valid = httpx.post(f"{server.url}/predict", content=bases["predict"][0], headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
    assert valid.status_code == 200 and valid.json()["predictions"], valid.text
    assert server.metric(INTERNAL) == internal_before
