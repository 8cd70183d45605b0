#!/usr/bin/env python3
"""serve_client.py - HTTP client cases for tests/test_serve.c.

usage: serve_client.py CASE PORT [ARG]

Each case talks to a running `moemesh serve` on 127.0.0.1:PORT over real
HTTP and exits 0 when every check holds, 1 with a message otherwise.  Only
the Python standard library is used.
"""
import http.client
import json
import random
import re
import os
import socket
import struct
import subprocess
import sys
import threading
import time

PORT = 0
KEY = None


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def request(method, path, body=None, headers=None, key=None, raw=None):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    h = {"Content-Type": "application/json"}
    if key or KEY:
        h["Authorization"] = "Bearer " + (key or KEY)
    h.update(headers or {})
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    text = r.read()
    c.close()
    return r.status, text


def post(path, body, **kw):
    st, text = request("POST", path, body, **kw)
    try:
        j = json.loads(text)
    except ValueError:
        fail("%s: not JSON: %r" % (path, text[:200]))
    return st, j


def complete(body, path="/v1/completions"):
    st, j = post(path, body)
    check(st == 200, "%s -> %d %s" % (path, st, j))
    ch = j["choices"][0]
    text = ch["message"]["content"] if "message" in ch else ch["text"]
    check(ch["finish_reason"] in ("stop", "length"), "finish_reason %r" % ch["finish_reason"])
    u = j["usage"]
    check(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], "usage sums")
    return text, j


def stream(body, path="/v1/completions", stop_after=None):
    """Returns (text, chunks, final chunk) from an SSE stream, checking each
    event: data lines are strict UTF-8 JSON, the last is [DONE]."""
    body = dict(body, stream=True)
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    h = {"Content-Type": "application/json"}
    if KEY:
        h["Authorization"] = "Bearer " + KEY
    c.request("POST", path, body=json.dumps(body), headers=h)
    r = c.getresponse()
    check(r.status == 200, "stream status %d" % r.status)
    check(r.getheader("Content-Type", "").startswith("text/event-stream"), "content type")
    check(r.getheader("Cache-Control") == "no-cache", "Cache-Control %r" % r.getheader("Cache-Control"))
    text, chunks, final, done = "", [], None, False
    while True:
        line = r.readline()
        if not line:
            break
        if line in (b"\n", b"\r\n"):
            continue
        check(line.startswith(b"data: "), "SSE line %r" % line[:80])
        payload = line[6:].strip()
        if payload == b"[DONE]":
            done = True
            break
        try:
            s = payload.decode("utf-8")  # strict: no character split across events
        except UnicodeDecodeError:
            fail("an event is not valid UTF-8: %r" % payload[:120])
        ev = json.loads(s)
        check("error" not in ev, "error event %s" % s)
        ch = ev["choices"][0]
        piece = ch["delta"].get("content", "") if "delta" in ch else ch["text"]
        text += piece or ""
        chunks.append(ev)
        if ch.get("finish_reason"):
            final = ev
        if stop_after is not None and len(chunks) >= stop_after:
            r.close()
            c.close()
            return text, chunks, None
    c.close()
    check(done, "stream did not end with data: [DONE]")
    check(final is not None and "usage" in final, "no final chunk with usage")
    return text, chunks, final


def metrics():
    st, text = request("GET", "/metrics")
    check(st == 200, "metrics status %d" % st)
    m = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            m[k] = float(v)
    return m


def run_cli(prompt, n):
    out = subprocess.run([os.environ["MOE_BIN"], "run", "-m", MODEL, "-p", prompt, "-n", str(n),
                          "--temp", "0", "--threads", "1"], capture_output=True, check=True)
    return out.stdout.decode()[:-1]  # run ends with a newline


# ---- cases -----------------------------------------------------------------------------

def case_basic():
    st, text = request("GET", "/health")
    check(st == 200 and json.loads(text)["status"] == "ok", "health %d %r" % (st, text))
    st, text = request("GET", "/v1/models")
    j = json.loads(text)
    check(st == 200 and j["object"] == "list" and j["data"][0]["id"], "models %r" % text)
    prompt = "And God said"
    t, j = complete({"prompt": prompt, "max_tokens": 24, "temperature": 0})
    check(j["object"] == "text_completion" and j["usage"]["completion_tokens"] == 24,
          "completion %r" % j)
    check(j["choices"][0]["finish_reason"] == "length", "finish length")
    cli = run_cli(prompt, 24)
    check(t == cli, "greedy server text %r != moemesh run %r" % (t, cli))
    t, j = complete({"messages": [{"role": "system", "content": "You are terse."},
                                  {"role": "user", "content": "Who made the heaven?"}],
                     "max_tokens": 12, "temperature": 0.7, "seed": 3},
                    "/v1/chat/completions")
    check(j["object"] == "chat.completion" and j["choices"][0]["message"]["role"] == "assistant",
          "chat %r" % j)
    check(j["usage"]["prompt_tokens"] > 10 and j["usage"]["completion_tokens"] <= 12, "chat usage")
    # a completion prompt's control tokens are read as those tokens (llama.cpp and
    # vLLM do): the chat above, rendered by /apply-template, is the same prompt
    chat_prompt = j["usage"]["prompt_tokens"]
    st, r = post("/apply-template", {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Who made the heaven?"}]})
    check(st == 200 and "<|im_start|>" in r["prompt"], "apply-template %d %r" % (st, r))
    _, j = complete({"prompt": r["prompt"], "max_tokens": 1, "temperature": 0})
    check(j["usage"]["prompt_tokens"] == chat_prompt,
          "the rendered chat as a completion prompt: %d tokens, as a chat %d" %
          (j["usage"]["prompt_tokens"], chat_prompt))
    # stop strings: the text ends before the first one that occurs
    stop = cli[12:17]
    t, j = complete({"prompt": prompt, "max_tokens": 24, "temperature": 0,
                     "stop": ["zzzz", stop]})
    check(t == cli[:cli.index(stop)] and j["choices"][0]["finish_reason"] == "stop",
          "stop %r: %r" % (stop, t))


def case_stream():
    for path, body in (("/v1/completions", {"prompt": "In the beginning", "max_tokens": 30,
                                            "temperature": 0.9, "top_p": 0.9, "top_k": 50,
                                            "min_p": 0.02, "seed": 7, "presence_penalty": 0.5,
                                            "frequency_penalty": 0.3}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Sing"}],
                                                 "max_tokens": 20, "temperature": 1.0,
                                                 "seed": 11})):
        whole, j = complete(body, path)
        text, chunks, final = stream(body, path)
        check(text == whole, "%s: streamed %r != non-streamed %r" % (path, text, whole))
        check(len(chunks) >= 3, "%s: only %d chunks" % (path, len(chunks)))
        # the streamed request repeats the first: the prefix cache (on by default) holds all of
        # its prompt but the last token, and the text is the same
        def counts(u):
            return {k: v for k, v in u.items() if k != "prompt_tokens_details"}
        check(counts(final["usage"]) == counts(j["usage"]), "%s: usage %r vs %r" % (path, final["usage"], j["usage"]))
        check(final["usage"]["prompt_tokens_details"]["cached_tokens"] == j["usage"]["prompt_tokens"] - 1,
              "%s: the repeat's usage %r" % (path, final["usage"]))
        if "chat" in path:
            check(chunks[0]["object"] == "chat.completion.chunk" and
                  chunks[0]["choices"][0]["delta"].get("role") == "assistant", "first chat chunk")


def case_utf8():
    # random weights + byte tokens: many tokens are pieces of characters
    body = {"prompt": "h\u00e9llo w\u00f6rld \u4e16\u754c", "max_tokens": 80, "temperature": 2.0,
            "seed": 5}
    for seed in (5, 6, 7):
        body["seed"] = seed
        whole, _ = complete(body)
        text, chunks, _ = stream(body)
        check(text == whole, "utf8 streamed %r != %r" % (text, whole))


def case_concurrent8():
    prompts = ["In the beginning", "And the LORD", "Blessed are", "The heavens", "Now these are",
               "Then came", "Hear, O Israel", "And it came to pass"]
    bodies = [{"prompt": p, "max_tokens": 24, "temperature": 0.8, "seed": 100 + i}
              for i, p in enumerate(prompts)]
    solo = [complete(b)[0] for b in bodies]
    res = [None] * 8

    def go(i):
        res[i] = stream(bodies[i])[0]
    th = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    for i in range(8):
        check(res[i] == solo[i], "client %d got %r, alone %r" % (i, res[i], solo[i]))
    check(len(set(solo)) > 1, "the 8 requests all gave the same text")


def case_determinism():
    target = {"prompt": "And the LORD spake unto Moses, saying, Speak unto the children of "
                        "Israel", "max_tokens": 40, "temperature": 0.9, "seed": 42}
    alone, _ = complete(target)
    others = []
    for i in range(15):
        p = "And the king said unto them, " * (1 + i % 4) + "Go"
        others.append({"prompt": p, "max_tokens": 10 + 5 * (i % 5), "temperature": 0.7,
                       "seed": i, "stream": i % 2 == 0})
    res = {}

    def go(i, b):
        res[i] = stream(b)[0] if b.get("stream") else complete(b)[0]
    th = [threading.Thread(target=go, args=(i, b)) for i, b in enumerate(others)]
    th.insert(7, threading.Thread(target=go, args=("t", target)))
    for t in th:
        t.start()
    for t in th:
        t.join()
    check(res["t"] == alone, "under load %r != alone %r" % (res["t"], alone))
    check(len(res) == 16, "missing results")


def case_cancel():
    body = {"prompt": "In the beginning", "max_tokens": 400, "temperature": 0.8, "seed": 1}
    m0 = metrics()
    stream(body, stop_after=3)  # closes the connection after 3 chunks
    deadline = time.time() + 10
    while time.time() < deadline:
        m = metrics()
        if m["moemesh_active_sequences"] == 0:
            break
        time.sleep(0.05)
    check(m["moemesh_active_sequences"] == 0, "the sequence is still active")
    check(m["moemesh_kv_bytes_in_use"] == 0 and m["moemesh_state_bytes_in_use"] == 0,
          "KV/state bytes still in use: %r" % m)
    gen = m["moemesh_generated_tokens_total"] - m0["moemesh_generated_tokens_total"]
    check(gen < 300, "generation ran on after the client left (%d tokens)" % gen)
    # a non-streamed request whose client leaves is cancelled too: one that fills the
    # 512-token context (the model's), left as soon as it runs, stops before its max_tokens
    m0 = metrics()
    n_max = 512 - len(tokenize(body["prompt"]))
    s = socket.create_connection(("127.0.0.1", PORT))
    b = json.dumps(dict(body, max_tokens=n_max)).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(b) + b)
    deadline = time.time() + 10
    while time.time() < deadline and metrics()["moemesh_active_sequences"] == 0:
        time.sleep(0.005)
    s.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        m = metrics()
        if m["moemesh_active_sequences"] == 0:
            break
        time.sleep(0.05)
    check(m["moemesh_active_sequences"] == 0, "the non-streamed sequence is still active")
    gen = m["moemesh_generated_tokens_total"] - m0["moemesh_generated_tokens_total"]
    check(gen < n_max, "the non-streamed generation ran on after the client left (%d tokens)"
          % gen)
    # the server still serves
    complete({"prompt": "Amen", "max_tokens": 4, "temperature": 0})


def tokenize(text):
    out = subprocess.run([os.environ["MOE_BIN"], "tokenize", "-m", MODEL],
                         input=(json.dumps(text) + "\n").encode(), capture_output=True, check=True)
    return json.loads(out.stdout)


def logits_rows(ids):
    """Raw float32 logits [len(ids)][n_vocab] from `moemesh logits` (an independent path)."""
    path = "/tmp/moe_lp_%d.f32" % os.getpid()
    subprocess.run([os.environ["MOE_BIN"], "logits", "-m", MODEL, "--tokens",
                    ",".join(str(i) for i in ids), "-o", path, "--threads", "1"],
                   capture_output=True, check=True)
    data = open(path, "rb").read()
    os.unlink(path)
    n_vocab = len(data) // 4 // len(ids)
    return [struct.unpack_from("<%df" % n_vocab, data, r * n_vocab * 4) for r in range(len(ids))]


def log_softmax_at(row, i):
    import math
    m = max(row)
    return row[i] - (m + math.log(sum(math.exp(v - m) for v in row)))


def case_logprobs():
    prompt = "And God said"
    body = {"prompt": prompt, "max_tokens": 10, "temperature": 0, "logprobs": 3}
    text, j = complete(body)
    lp = j["choices"][0]["logprobs"]
    toks, vals, tops, offs = lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], lp["text_offset"]
    check(len(toks) == len(vals) == len(tops) == len(offs) == j["usage"]["completion_tokens"],
          "logprobs lengths %r" % lp)
    check("".join(toks) == text, "tokens %r do not make the text %r" % (toks, text))
    at = 0
    for t, v, top, o in zip(toks, vals, tops, offs):
        check(o == at, "text_offset %d, expected %d" % (o, at))
        at += len(t.encode())
        check(v <= 0 and len(top) == 3, "logprob %r, top %r" % (v, top))
        tv = list(top.values())
        check(tv == sorted(tv, reverse=True), "top not best first: %r" % top)
        check(abs(v - tv[0]) < 1e-6 and list(top)[0] == t, "greedy token %r is not the best %r" % (t, top))
    # the values against log-softmax of the logits of `moemesh logits` on the same tokens
    p_ids = tokenize(prompt)
    g_ids = []
    for t in toks:
        ids = tokenize(t)
        check(len(ids) == 1, "token %r re-encodes to %r" % (t, ids))
        g_ids.append(ids[0])
    rows = logits_rows(p_ids + g_ids[:-1])
    for i, gid in enumerate(g_ids):
        row = rows[len(p_ids) - 1 + i]
        want = log_softmax_at(row, gid)
        check(abs(vals[i] - want) < 1e-4, "token %d: logprob %r, log-softmax of logits %r" % (i, vals[i], want))
        best = sorted(range(len(row)), key=lambda k: -row[k])[:3]
        for k, (ttext, tval) in zip(best, tops[i].items()):
            check(abs(tval - log_softmax_at(row, k)) < 1e-4, "top %r: %r" % (ttext, tval))
    # no logprobs asked: null
    t2, j2 = complete({"prompt": prompt, "max_tokens": 4, "temperature": 0})
    check(j2["choices"][0]["logprobs"] is None, "logprobs not asked but %r" % j2["choices"][0]["logprobs"])

    # chat: streamed records are the non-streamed ones, bytes make the text
    cb = {"messages": [{"role": "user", "content": "Sing"}], "max_tokens": 12,
          "temperature": 0.8, "seed": 5, "logprobs": True, "top_logprobs": 2}
    whole, j = complete(cb, "/v1/chat/completions")
    content = j["choices"][0]["logprobs"]["content"]
    check(len(content) == j["usage"]["completion_tokens"], "chat records %d" % len(content))
    check(b"".join(bytes(c["bytes"]) for c in content) == whole.encode(), "chat bytes vs text")
    for c in content:
        check(len(c["top_logprobs"]) == 2 and c["logprob"] <= c["top_logprobs"][0]["logprob"] + 1e-6,
              "chat record %r" % c)
    text, chunks, final = stream(cb, "/v1/chat/completions")
    check(text == whole, "chat stream text")
    streamed = []
    for ev in chunks:
        l = ev["choices"][0].get("logprobs")
        if l:
            streamed += l["content"]
    check(streamed == content, "streamed records differ:\n%r\n%r" % (streamed, content))

    # a stop string: no record for what it cut off
    stop = text[4:7] if len(text) > 8 else None
    if stop:
        t3, j3 = complete(dict(cb, stop=[stop]), "/v1/chat/completions")
        c3 = j3["choices"][0]["logprobs"]["content"]
        got = b"".join(bytes(c["bytes"]) for c in c3)
        check(got.startswith(t3.encode()) and len(got) < len(t3.encode()) + 16 and
              len(c3) < len(content), "stop: records %r for text %r" % (c3, t3))

    for path, b, param in (("/v1/completions", {"prompt": "x", "logprobs": True}, "logprobs"),
                           ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs"),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                     "top_logprobs": 2}, "top_logprobs"),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                     "logprobs": 3}, "logprobs")):
        st, jj = post(path, b)
        expect_error(st, jj, 400, param)


def expect_error(st, j, code, param=None):
    check(st == code, "status %d, expected %d: %r" % (st, code, j))
    e = j.get("error")
    check(isinstance(e, dict) and isinstance(e.get("message"), str) and e.get("type"),
          "error shape %r" % j)
    if param is not None:
        check(e.get("param") == param, "param %r, expected %r" % (e.get("param"), param))


def case_errors():
    def raw(path, data, method="POST"):
        st, text = request(method, path, raw=data)
        return st, json.loads(text)
    expect_error(*raw("/v1/completions", b"{not json"), 400)
    expect_error(*raw("/v1/completions", b"[1,2]"), 400)
    expect_error(*post("/v1/completions", {"prompt": "x", "temperature": "hot"}), 400,
                 "temperature")
    expect_error(*post("/v1/completions", {"prompt": "x", "max_tokens": 1.5}), 400, "max_tokens")
    expect_error(*post("/v1/completions", {"prompt": "x", "stream": "yes"}), 400, "stream")
    expect_error(*post("/v1/completions", {"prompt": "x", "stop": [1]}), 400, "stop")
    expect_error(*post("/v1/completions", {"prompt": "x", "seed": -1}), 400, "seed")
    expect_error(*post("/v1/completions", {"max_tokens": 3}), 400, "prompt")
    expect_error(*post("/v1/chat/completions", {"messages": "hi"}), 400, "messages")
    expect_error(*post("/v1/chat/completions", {"messages": [{"content": "hi"}]}), 400, "messages")
    expect_error(*post("/v1/completions", {"prompt": "x", "max_tokens": 100000}), 400, "max_tokens")
    expect_error(*post("/v1/completions", {"prompt": "the " * 600, "max_tokens": 8}), 400,
                 "max_tokens")
    expect_error(*raw("/v1/nothing", b"{}"), 404)
    st, text = request("GET", "/nope")
    expect_error(st, json.loads(text), 404)
    st, text = request("GET", "/v1/completions")
    expect_error(st, json.loads(text), 405)
    big = json.dumps({"prompt": "x" * 20000}).encode()
    expect_error(*raw("/v1/completions", big), 413)
    # garbage on the socket does not hurt the server (each sent whole, then the end of the
    # stream: the server answers or closes at once, where the garbage alone left it waiting
    # for more and the read ran into its 5 s timeout)
    for junk in (b"\x00\x01\x02garbage\r\n\r\n", b"GET / HTTP/1.1\r\nHost: " + b"a" * 70000 +
                 b"\r\n\r\n", b"POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"):
        s = socket.create_connection(("127.0.0.1", PORT))
        try:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            s.recv(100)
        except OSError:
            pass
        s.close()
    # queue full: --parallel 1 --queue 1; one runs, one waits, the next gets 429
    # (as long a generation as the 512-token context allows, and little time between the
    # requests, so that the first is still running when the third arrives on a fast machine)
    long_body = {"prompt": "In the beginning", "max_tokens": 480, "temperature": 0.8, "seed": 1}
    conns = []
    for _ in range(2):
        c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
        c.request("POST", "/v1/completions", body=json.dumps(dict(long_body, stream=True)),
                  headers={"Content-Type": "application/json"})
        conns.append(c)
        time.sleep(0.05)
    expect_error(*post("/v1/completions", long_body), 429)
    for c in conns:
        c.close()
    m = metrics()
    check(m['moemesh_http_requests_total{code="429"}'] >= 1, "429 not counted")
    check(m['moemesh_http_requests_total{code="400"}'] >= 12, "400s not counted")
    deadline = time.time() + 10  # the two clients' requests are dropped soon
    while time.time() < deadline:
        st, j = post("/v1/completions", {"prompt": "Amen", "max_tokens": 2})
        if st != 429:
            break
        time.sleep(0.05)
    check(st == 200, "after the queue emptied: %d %r" % (st, j))


def case_fuzz():
    """Seeded random JSON bodies (wrong types, huge and odd values, missing and
    extra keys, flipped bytes): every answer is a 2xx or a 4xx, never 5xx, and
    the server stays up (the ASan build also checks memory and leaks)."""
    rnd = random.Random(7)
    base = [{"prompt": "In the beginning", "max_tokens": 3},
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True},
            {"prompt": "x", "max_tokens": 2, "stop": ["a", "b"], "top_k": 3, "seed": 5,
             "temperature": 0.5}]
    vals = [None, True, False, 0, -1, 1e308, -1e308, 2**63, "", "x" * 5000, [], {}, [1, 2],
            {"a": 1}, "\u0000", "\ud800", 3.5, "<|im_start|>"]
    keys = ["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
            "stop", "stream", "presence_penalty", "frequency_penalty", "n", "model", "role",
            "content"]

    def mutate(o, d=0):
        if isinstance(o, dict):
            o = dict(o)
            for _ in range(rnd.randint(1, 3)):
                r, k = rnd.random(), rnd.choice(keys + list(o.keys() or ["k"]))
                if r < 0.4:
                    o[k] = rnd.choice(vals)
                elif r < 0.6 and k in o:
                    del o[k]
                elif d < 3 and k in o:
                    o[k] = mutate(o[k], d + 1)
            return o
        if isinstance(o, list):
            o = list(o)
            if o and rnd.random() < 0.5:
                o[rnd.randrange(len(o))] = mutate(o[rnd.randrange(len(o))], d + 1)
            else:
                o.append(rnd.choice(vals))
            return o
        return rnd.choice(vals)

    for i in range(1000):
        path = rnd.choice(["/v1/completions", "/v1/chat/completions"])
        body = json.dumps(mutate(rnd.choice(base))).encode()
        if rnd.random() < 0.15:
            b = bytearray(body)
            for _ in range(rnd.randint(1, 5)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            body = bytes(b)
        st, text = request("POST", path, raw=body)
        check(st < 500, "request %d got %d for %r: %r" % (i, st, body[:200], text[:200]))
    st, _ = request("GET", "/health")
    check(st == 200, "health %d after the fuzz" % st)


def case_dead_cluster():
    """The test killed every worker: /health turns 503 with the reason (found by
    the idle heartbeat) and a request fails with 503 and that reason."""
    deadline = time.time() + 30
    st, text = 200, b""
    while time.time() < deadline:
        st, text = request("GET", "/health")
        if st == 503:
            break
        time.sleep(0.3)
    check(st == 503, "health stayed %d after the workers died: %r" % (st, text))
    check(b"no worker left" in text, "health gives no reason: %r" % text)
    st, j = post("/v1/completions", {"prompt": "In the beginning", "max_tokens": 4})
    check(st == 503, "completion -> %d %s, expected 503" % (st, j))
    check("cannot serve" in j["error"]["message"], "no reason: %s" % j)


def exchange(data, more=None, timeout=10):
    """Sends raw bytes (then more, after a pause, if given) on a new connection and
    returns (status, lower-case headers, body) of the reply, read until the server
    closes; fails if no reply comes within timeout seconds."""
    s = socket.create_connection(("127.0.0.1", PORT))
    s.settimeout(timeout)
    try:
        s.sendall(data)
        if more is not None:
            time.sleep(0.3)
            s.sendall(more)
    except OSError:
        pass  # the server may answer and close before taking everything
    buf = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            buf += b
    except socket.timeout:
        fail("no reply within %d s to %r (got %r)" % (timeout, data[:80], buf[:200]))
    except OSError:
        pass
    s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    check(lines[0].startswith("HTTP/1.1 "), "status line %r" % lines[0])
    hdr = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hdr[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), hdr, body


def case_http():
    """What the transport and the routing promise, with --max-body 4096: HEAD on
    GET routes, 404 / 405 before anything else, 413 answered from the headers
    (before the body is sent) and for a chunked body over the cap, a body in
    pieces, JSON errors, and exact per-status counters in /metrics."""
    def error_reply(st, hdr, body, code):
        check(hdr.get("content-type") == "application/json", "error content type %r" % hdr)
        expect_error(st, json.loads(body), code)
    for path in ("/health", "/v1/models", "/metrics"):
        st, hdr, body = exchange(b"HEAD %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                 % path.encode())
        check(st == 200 and body == b"", "HEAD %s: %d %r" % (path, st, body))
    st, _, _ = exchange(b"HEAD /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check(st == 405, "HEAD on a POST route: %d" % st)
    n405 = 1
    for method, path in (("POST", "/v1/models"), ("POST", "/health"), ("POST", "/metrics"),
                         ("PUT", "/v1/chat/completions"), ("GET", "/v1/chat/completions")):
        st, text = request(method, path, raw=b"{}" if method != "GET" else None)
        check(st == 405, "%s %s: %d" % (method, path, st))
        expect_error(st, json.loads(text), 405)
        n405 += 1
    for path in ("/", "/v1", "/v1/completions/", "/HEALTH", "/v1/nothing"):
        error_reply(*exchange(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                              % path.encode()), 404)
    # 413 from Content-Length alone: the reply comes although no body byte was sent
    error_reply(*exchange(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/json\r\nContent-Length: 99999\r\n\r\n", timeout=5), 413)
    # the cap is on the body: 4096 bytes pass, 4097 do not; a chunked body over it is cut
    small = b'{"prompt": "Amen", "max_tokens": 1, "temperature": 0}'
    for size, code in ((4096, 200), (4097, 413)):
        b = small + b" " * (size - len(small))
        st, hdr, body = exchange(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close"
                                 b"\r\nContent-Length: %d\r\n\r\n" % len(b) + b)
        check(st == code, "a body of %d bytes: %d %r" % (size, st, body[:200]))
    part = b"x" * 3000
    error_reply(*exchange(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\nbb8\r\n" + part + b"\r\nbb8\r\n" +
                          part + b"\r\n0\r\n\r\n"), 413)
    # a body that arrives in two pieces is read whole
    st, hdr, body = exchange(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(small) + small[:9], small[9:])
    check(st == 200 and json.loads(body)["object"] == "text_completion", "split body: %d %r"
          % (st, body[:200]))
    # every reply is counted under its status (this server answered nothing else)
    m = metrics()
    for code, n in (("200", 3 + 2), ("404", 5), ("405", n405), ("413", 3), ("400", 0),
                    ("401", 0)):
        got = m['moemesh_http_requests_total{code="%s"}' % code]
        check(got == n, "%s counted %d times, expected %d" % (code, got, n))


def case_auth(key):
    global KEY
    st, _ = request("GET", "/health")
    check(st == 200, "health needs no key (%d)" % st)
    for path in ("/v1/models", "/metrics"):
        st, text = request("GET", path)
        expect_error(st, json.loads(text), 401)
        st, text = request("GET", path, key="wrong" + key)
        expect_error(st, json.loads(text), 401)
        st, text = request("GET", path, key=key[:-1])
        expect_error(st, json.loads(text), 401)
    st, j = post("/v1/completions", {"prompt": "x", "max_tokens": 2})
    expect_error(st, j, 401)
    # the route and the method are checked before the key, the key before the size
    st, text = request("GET", "/v1/nothing")
    expect_error(st, json.loads(text), 404)
    st, text = request("POST", "/v1/models", raw=b"{}")
    expect_error(st, json.loads(text), 405)
    st, hdr, body = exchange(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                             b"999999999\r\n\r\n", timeout=5)
    expect_error(st, json.loads(body), 401)
    st, _, body = exchange(b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check(st == 200 and body == b"", "HEAD /health without a key: %d" % st)
    KEY = key
    st, _ = request("GET", "/v1/models")
    check(st == 200, "right key refused (%d)" % st)
    complete({"prompt": "Amen", "max_tokens": 2, "temperature": 0})


def add_chat_template(src, dst, template):
    """Copies GGUF src to dst with one more key: tokenizer.chat_template."""
    d = open(src, "rb").read()
    magic, ver, n_t, n_kv = struct.unpack_from("<IIQQ", d, 0)
    off = 24
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    align = 32

    def skip_str(o):
        n, = struct.unpack_from("<Q", d, o)
        return o + 8 + n

    def skip_val(o, t):
        if t == 8:
            return skip_str(o)
        if t == 9:
            et, n = struct.unpack_from("<IQ", d, o)
            o += 12
            for _ in range(n):
                o = skip_val(o, et)
            return o
        return o + sizes[t]
    for _ in range(n_kv):
        kn, = struct.unpack_from("<Q", d, off)
        key = d[off + 8:off + 8 + kn]
        off = skip_str(off)
        t, = struct.unpack_from("<I", d, off)
        if key == b"general.alignment":
            align, = struct.unpack_from("<I", d, off + 4)
        off = skip_val(off + 4, t)
    kv_end = off
    for _ in range(n_t):
        off = skip_str(off)
        nd, = struct.unpack_from("<I", d, off)
        off += 4 + 8 * nd + 4 + 8
    data_start = (off + align - 1) // align * align
    k = b"tokenizer.chat_template"
    v = template.encode()
    kv = struct.pack("<Q", len(k)) + k + struct.pack("<IQ", 8, len(v)) + v
    head = struct.pack("<IIQQ", magic, ver, n_t, n_kv + 1) + d[24:kv_end] + kv + d[kv_end:off]
    head += b"\0" * ((-len(head)) % align)
    open(dst, "wb").write(head + d[data_start:])


def case_conversation(out):
    """Four turns of a chat, each resending the whole conversation with the reply and a new
    message added (as agents do), greedy and seeded: writes the replies, usage and the prefix
    cache's metrics to OUT (JSON) for the test to compare between servers."""
    rnd = random.Random(11)
    words = ["LORD", "Moses", "Israel", "land", "day", "house", "son", "king", "people", "city"]
    msgs = [{"role": "system", "content": " ".join(rnd.choice(words) for _ in range(120))}]
    texts, cached, prompt = [], [], []
    for turn in range(4):
        msgs.append({"role": "user", "content": " ".join(rnd.choice(words) for _ in range(40 + 30 * turn))})
        _, j = complete({"messages": msgs, "max_tokens": 12, "temperature": 0.7, "seed": turn},
                        "/v1/chat/completions")
        m = j["choices"][0]["message"]
        texts.append(m["content"])
        cached.append(j["usage"]["prompt_tokens_details"]["cached_tokens"])
        prompt.append(j["usage"]["prompt_tokens"])
        msgs.append({"role": "assistant", "content": m["content"]})
    # a streamed repeat of the last request: the same bytes, from the cache
    _, chunks, final = stream({"messages": msgs[:-1], "max_tokens": 12, "temperature": 0.7,
                               "seed": 3}, "/v1/chat/completions")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    check(text == texts[-1], "streamed repeat %r vs %r" % (text, texts[-1]))
    met = {k: v for k, v in metrics().items() if k.startswith("moemesh_prefix_cache_")}
    json.dump({"texts": texts, "cached": cached, "prompt": prompt, "metrics": met,
               "repeat_cached": final["usage"]["prompt_tokens_details"]["cached_tokens"]},
              open(out, "w"))


def case_reasoning():
    """With a template that opens <think> for the model (Qwen3.5's), what the model writes before
    </think> is reasoning_content (OpenAI) or a thinking block (Anthropic), streamed as
    delta.reasoning_content adding up to the same; reasoning_format "none" gives the same text as
    content; enable_thinking false gives no reasoning at all."""
    body = {"messages": [{"role": "user", "content": "In the beginning"}], "max_tokens": 24, "seed": 3,
            "temperature": 0.8}
    _, j = complete(body, "/v1/chat/completions")
    m = j["choices"][0]["message"]
    check(m.get("reasoning_content"), "no reasoning_content: %r" % m)
    check("<think>" not in m["reasoning_content"] and "</think>" not in (m["content"] or ""), repr(m))
    _, chunks, _ = stream(dict(body), "/v1/chat/completions")
    r = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks if c["choices"])
    check(r == m["reasoning_content"], "streamed reasoning %r vs %r" % (r, m["reasoning_content"]))
    _, j2 = complete(dict(body, reasoning_format="none"), "/v1/chat/completions")
    m2 = j2["choices"][0]["message"]
    check("reasoning_content" not in m2, "reasoning_format none still split: %r" % m2)
    check(m2["content"].strip() == m["reasoning_content"].strip(),
          "raw %r vs reasoning %r" % (m2["content"], m["reasoning_content"]))
    _, j3 = complete(dict(body, chat_template_kwargs={"enable_thinking": False}), "/v1/chat/completions")
    m3 = j3["choices"][0]["message"]
    check("reasoning_content" not in m3 and m3["content"], "thinking off: %r" % m3)
    st, a = post("/v1/messages", {"model": "m", "max_tokens": 24, "messages": body["messages"]})
    check(st == 200 and a["content"][0]["type"] == "thinking" and a["content"][0]["thinking"],
          "Anthropic: %r" % a)
    st, a2 = post("/v1/messages", {"model": "m", "max_tokens": 24, "messages": body["messages"],
                                   "thinking": {"type": "disabled"}})
    check(st == 200 and all(b["type"] != "thinking" for b in a2["content"]), "Anthropic off: %r" % a2)


def case_mistral_template():
    """A model whose own template is not ChatML: chats and /apply-template use it."""
    st, j = post("/apply-template", {"messages": [{"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": "Hello"}]})
    check(st == 200 and j["prompt"] == "[INST] Hi [/INST][INST] Hello [/INST]", "%d %r" % (st, j))
    complete({"messages": [{"role": "user", "content": "In the beginning"}], "max_tokens": 4},
             "/v1/chat/completions")


def case_apply_template(template):
    """POST /apply-template for every conversation of tests/fixtures/chat-templates/cases, against
    the reference rendering (Python's Jinja2 as transformers sets it up, Debian's /usr/bin/python3,
    render_batch.py) of the same conversation with the same bos/eos tokens: the same bytes, or both
    refuse (a raise_exception gives a 400 with its message).  The server's KJV model has BOS
    <|endoftext|> and EOS <|im_end|> (models/README.md); the reference's strftime_now is fixed at
    2026-01-01, the server's is today, so a "Current date: " line is compared without its date."""
    here = os.path.dirname(os.path.abspath(__file__))
    cdir = os.path.join(here, "fixtures", "chat-templates")
    text = open(template, encoding="utf-8").read()
    names = sorted(os.listdir(os.path.join(cdir, "cases")))
    cases = [json.load(open(os.path.join(cdir, "cases", n), encoding="utf-8")) for n in names]
    jobs = []
    for case in cases:
        ref = dict(case, bos_token="<|endoftext|>", eos_token="<|im_end|>")
        ref["messages"] = [dict(m, content=m.get("content") if m.get("content") is not None else "")
                           for m in case["messages"]]
        jobs.append([0, ref])
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        jp, op = os.path.join(d, "jobs.json"), os.path.join(d, "out.json")
        json.dump({"templates": [text], "jobs": jobs}, open(jp, "w", encoding="utf-8"))
        rc = subprocess.call(["/usr/bin/python3", os.path.join(cdir, "render_batch.py"), jp, op])
        check(rc == 0, "render_batch.py failed (Debian's python3-jinja2 missing?)")
        refs = json.load(open(op, encoding="utf-8"))
    date = re.compile(r"Current date: \d{4}-\d{2}-\d{2}")
    same = 0
    for name, case, ref in zip(names, cases, refs):
        body = {"messages": case["messages"], "add_generation_prompt": case.get("add_generation_prompt", True)}
        if case.get("tools") is not None:
            body["tools"] = case["tools"]
        if case.get("kwargs"):
            body["chat_template_kwargs"] = case["kwargs"]
        st, j = post("/apply-template", body)
        if "out" in ref:
            check(st == 200, "%s: %d %s" % (name, st, j))
            got = date.sub("Current date: 2026-01-01", j["prompt"])
            if got != ref["out"]:
                k = next(i for i in range(min(len(got), len(ref["out"])) + 1)
                         if i == min(len(got), len(ref["out"])) or got[i] != ref["out"][i])
                fail("%s: differs from Jinja2 at byte %d: ours %r, Jinja2 %r" %
                     (name, k, got[max(0, k - 40):k + 40], ref["out"][max(0, k - 40):k + 40]))
            same += 1
        else:
            check(st == 400, "%s: Jinja2 refused (%s) but the server answered %d" % (name, ref, st))
            if "raised" in ref:
                check(ref["raised"] in j["error"]["message"], "%s: %r lacks %r" % (name, j, ref["raised"]))
    check(same > 0, "no case rendered at all")
    print("apply-template: %d of %d cases byte-identical to Jinja2, the others refused by both"
          % (same, len(cases)), file=sys.stderr)


def case_kv_budget():
    """Server: --ctx 8192 --kv f32 --kv-budget 1 --parallel 2 on a model with 512 bytes
    of f32 KV per position, so 8 blocks of 256 positions in all."""
    st, j = post("/v1/completions", {"prompt": "In the beginning", "max_tokens": 2100})
    check(st == 400, "a request needing 9 KV blocks of 8 -> %d %s" % (st, j))
    msg = j["error"]["message"]
    check("9 KV blocks" in msg and "holds 8" in msg, "the 400 does not name the numbers: %r" % msg)
    check(j["error"].get("param") == "max_tokens", "param %r" % j["error"].get("param"))
    # two requests of 5 blocks each (prompt + max_tokens = 1100 positions): 10 > 8, so the
    # second waits for the first
    base = "And the king said unto them, Go ye, and inquire of the LORD for me. " * 45
    bodies, alone = [], []
    for k in range(2):
        p = base + ("Then answered Jesus" if k else "And it came to pass")
        bodies.append({"prompt": p, "max_tokens": 1100 - len(tokenize(p)), "temperature": 0})
        text, one = complete(bodies[k])
        n = one["usage"]["prompt_tokens"] + bodies[k]["max_tokens"]
        check(800 < one["usage"]["prompt_tokens"] and 1024 < n <= 1280,
              "prompt of %d tokens, %d positions with max_tokens: not 5 blocks"
              % (one["usage"]["prompt_tokens"], n))
        alone.append(text)
    times = [[None, None], [None, None]]
    texts = [None, None]
    first_token = threading.Event()

    def go(k):
        c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=300)
        c.request("POST", "/v1/completions", body=json.dumps(dict(bodies[k], stream=True)),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        check(r.status == 200, "stream %d status %d" % (k, r.status))
        text = ""
        for line in r:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            piece = json.loads(line[6:])["choices"][0].get("text") or ""
            if piece and times[k][0] is None:
                times[k][0] = time.monotonic()
                if k == 0:
                    first_token.set()
            text += piece
        times[k][1] = time.monotonic()
        texts[k] = text
        c.close()
    a = threading.Thread(target=go, args=(0,))
    a.start()
    # the second is sent once the first runs (its first token came)
    check(first_token.wait(120), "no first token from the first stream")
    b = threading.Thread(target=go, args=(1,))
    b.start()
    a.join()
    b.join()
    check(texts == alone, "texts under the budget differ from each alone")
    check(len(alone[0]) > 100, "the first reply is too short to overlap: %r" % alone[0])
    check(times[1][0] >= times[0][1],
          "the second request ran beside the first (first token %.3f s before the first "
          "ended): 10 blocks > the budget's 8" % (times[0][1] - times[1][0]))


def case_spec(out):
    """Requests whose text repeats (so prompt lookup finds drafts), greedy and seeded, eight at
    once (several sequences' drafts checked in one step), streamed and not, one with logprobs and
    one chat: writes the texts, the logprobs and the drafting metrics to OUT (JSON) for the test
    to compare between servers with and without --spec."""
    verse = ("And God said, Let there be light: and there was light. And God saw the light, "
             "that it was good: and God divided the light from the darkness. ")
    prompts = [verse * 3 + "And God said", verse * 2 + "And God saw",
               "And the LORD spake unto Moses, saying, Speak unto the children of Israel, " * 3,
               "In the beginning God created the heaven and the earth. " * 4 + "In the beginning",
               "Blessed are the poor in spirit: for theirs is the kingdom of heaven. " * 2,
               "And it came to pass, " * 6, verse + "And God", "The LORD is my shepherd; " * 5]
    bodies = [{"prompt": p, "max_tokens": 40, "temperature": 0.0 if i % 2 == 0 else 0.8,
               "seed": 7 + i, "stream": i % 3 == 0} for i, p in enumerate(prompts)]
    res = [None] * len(bodies)

    def go(i):
        b = bodies[i]
        res[i] = stream(b)[0] if b["stream"] else complete(b)[0]
    th = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in th:
        t.start()
    for t in th:
        t.join()
    alone = [complete(dict(b, stream=False))[0] for b in bodies[:2]]
    check(alone == res[:2], "alone %r, among 8 %r" % (alone, res[:2]))
    _, j = complete({"prompt": verse * 2 + "And God", "max_tokens": 24, "temperature": 0,
                     "logprobs": 2})
    lp = j["choices"][0]["logprobs"]
    _, c = complete({"messages": [{"role": "user", "content": verse * 2}], "max_tokens": 24,
                     "temperature": 0.7, "seed": 3}, "/v1/chat/completions")
    res.append(c["choices"][0]["message"]["content"])
    met = {k: v for k, v in metrics().items() if k.startswith("moemesh_spec_")}
    json.dump({"texts": res, "logprobs": lp, "metrics": met}, open(out, "w"))


def case_rebalance(out):
    """Greedy completions of skewed prompts (one word repeated: every position routes alike),
    then the cluster's metrics: writes both to OUT (JSON) for the test to compare between
    servers (test_rebalance.c)."""
    texts = []
    for w in ["the", "LORD", "and", "said", "the", "God"]:
        t, _ = complete({"prompt": " ".join([w] * 40), "max_tokens": 24, "temperature": 0})
        texts.append(t)
    met = {k: v for k, v in metrics().items()
           if "rebalance" in k or "imbalance" in k or k.startswith("moemesh_worker_")}
    json.dump({"texts": texts, "metrics": met}, open(out, "w"))


def case_slowloris():
    """1,000 connections that send part of a request's headers, a line more
    now and then, and never finish (slowloris), leave real clients served:
    /health, and the same text as before them, whole and streamed; then the
    server still serves once they are gone."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (1200 if hard == resource.RLIM_INFINITY else min(1200, hard), hard))
    body = {"prompt": "In the beginning", "max_tokens": 12, "temperature": 0}
    before, _ = complete(body)
    idle = []
    for i in range(1000):
        s = socket.create_connection(("127.0.0.1", PORT), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n")
        idle.append(s)
    for s in idle:  # one more header line each: never idle long enough to be timed out
        s.sendall(b"X-Slow: 1\r\n")
    st, text = request("GET", "/health")
    check(st == 200, "/health under 1000 idle connections: %d %r" % (st, text[:200]))
    after, _ = complete(body)
    check(after == before, "text under 1000 idle connections %r, alone %r" % (after, before))
    streamed, _, _ = stream(body)
    check(streamed == before, "streamed under 1000 idle connections %r" % streamed)
    for s in idle:
        s.close()
    again, _ = complete(body)
    check(again == before, "text after the idle connections left %r" % again)


def main():
    global PORT, MODEL
    case = sys.argv[1]
    if case == "make-template-model":  # serve_client.py make-template-model SRC DST TEMPLATE
        add_chat_template(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    PORT = int(sys.argv[2])
    MODEL = os.environ.get("MOE_MODEL", "")
    if case == "auth":
        case_auth(sys.argv[3])
    elif case == "apply_template":
        case_apply_template(sys.argv[3])
    elif case == "conversation":
        case_conversation(sys.argv[3])
    elif case == "spec":
        case_spec(sys.argv[3])
    elif case == "rebalance":
        case_rebalance(sys.argv[3])
    else:
        globals()["case_" + case]()
    print("ok: " + case, file=sys.stderr)


if __name__ == "__main__":
    main()
