"""A reward server: one process holds the reward model, and every env, worker and rank scores through it.

Without it each ``AsyncVectorEnv`` worker and each data-parallel rank loads its own copy of the reward model;
with it a large RM sits in one process (on one device), and the others send it texts::

    rlhf serve-reward --reward rm --port 8765                        # prints the URL, serves until Ctrl-C
    reward = load_reward("http://127.0.0.1:8765")                    # in each env / rank: a RemoteReward

The wire format is JSON over plain HTTP (no pickle, so a client runs no code the server sends):

- ``POST /score`` ``{"prompts": [str], "responses": [str], "eos": [bool]}`` (``eos`` optional, all true by
  default) answers ``{"scores": [float]}``; a bad request answers 400 and a reward that raises answers 500,
  both with ``{"error": message}``, and the server keeps serving;
- ``GET /info`` answers ``{"name", "spec", "version", "max_batch"}``: a health check, and the batch limit.

One lock serialises scoring, so concurrent clients share one model safely. There is no authentication:
the server binds to 127.0.0.1 unless told otherwise, and anyone who can reach its port can use it.

Importing this module does not import torch: a process that scores remotely needs no model code.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from rlhf_env import __version__
from rlhf_env.rewards.base import Reward, RewardError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 2**20  # a request larger than this is refused before it is read


class BadRequest(ValueError):
    """A request the server refuses with 400."""


def parse_request(body: bytes, max_batch: int) -> tuple[list[str], list[str], list[bool]]:
    """The prompts, responses and eos flags of a ``/score`` body, or a BadRequest saying what is wrong."""
    try:
        request = json.loads(body)
    except ValueError as e:
        raise BadRequest(f"the body is not JSON: {e}") from None
    if not isinstance(request, dict):
        raise BadRequest(f"the body must be a JSON object, not {type(request).__name__}")
    missing = [k for k in ("prompts", "responses") if k not in request]
    if missing:
        raise BadRequest(f"missing field(s) {missing}; send prompts, responses and (optionally) eos")
    prompts, responses = request["prompts"], request["responses"]
    eos = request.get("eos", [True] * len(responses) if isinstance(responses, list) else None)
    for name, values, kind in (("prompts", prompts, str), ("responses", responses, str), ("eos", eos, bool)):
        if not isinstance(values, list) or not all(isinstance(v, kind) for v in values):
            raise BadRequest(f"{name} must be a list of {kind.__name__}")
    if not len(prompts) == len(responses) == len(eos):
        raise BadRequest(f"{len(prompts)} prompts, {len(responses)} responses and {len(eos)} eos flags")
    if len(prompts) > max_batch:
        raise BadRequest(f"{len(prompts)} responses in one request; this server takes at most {max_batch}")
    return prompts, responses, eos


def body_length(header: str | None) -> int:
    """The Content-Length to read: a number of bytes up to MAX_BODY_BYTES, else a BadRequest."""
    length = int(header) if header and header.isdigit() else -1
    if not 0 <= length <= MAX_BODY_BYTES:
        raise BadRequest(f"Content-Length {header!r}: send the JSON body's length, at most {MAX_BODY_BYTES} bytes")
    return length


class RewardServer:
    """A reward behind ``ThreadingHTTPServer``, serving in a daemon thread from construction on.

    ``port=0`` binds a free port (``.port``, ``.url``); ``close()`` (or leaving a ``with`` block) stops it.
    """

    def __init__(self, reward: Reward, spec: str, host: str = "127.0.0.1", port: int = 0, max_batch: int = 4096):
        self.reward, self.max_batch, self.lock = reward, max_batch, threading.Lock()
        self.info = {"name": reward.name, "spec": spec, "version": __version__, "max_batch": max_batch}
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.host, self.port = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"reward-server:{self.port}", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def score(self, body: bytes) -> dict:
        prompts, responses, eos = parse_request(body, self.max_batch)
        with self.lock:  # one model: requests from many clients take turns
            return {"scores": self.reward(prompts, responses, eos).tolist()}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def __enter__(self) -> RewardServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _handler(server: RewardServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/info":
                self.reply(200, server.info)
            else:
                self.reply(404, {"error": f"no {self.path}: GET /info or POST /score"})

        def do_POST(self):
            if self.path != "/score":
                return self.reply(404, {"error": f"no {self.path}: GET /info or POST /score"})
            try:
                self.reply(200, server.score(self.rfile.read(body_length(self.headers.get("Content-Length")))))
            except BadRequest as e:
                self.reply(400, {"error": str(e)})
            except Exception as e:  # the reward's own failure: tell the client, keep serving
                logger.exception("the reward raised")
                self.reply(500, {"error": f"{type(e).__name__}: {e}"})

        def reply(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        timeout = 60  # seconds a stalled client may hold its thread

        def log_message(self, format, *args):  # no line per request on stderr
            pass

    return Handler


def serve_reward(spec: str | Callable | Reward = "rm", host: str = "127.0.0.1", port: int = 0, device: str = "cpu",
                 data: str | None = None, max_batch: int = 4096, **kwargs) -> RewardServer:
    """Load the reward once (anything ``load_reward`` takes, with its ``device``, ``data`` and ``kwargs``) and
    serve it at ``host:port``; returns the running ``RewardServer``."""
    from rlhf_env.rewards import load_reward

    reward = load_reward(spec, device=device, data=data, **kwargs)
    return RewardServer(reward, spec if isinstance(spec, str) else reward.name, host, port, max_batch)


class RemoteReward(Reward):
    """A reward served by ``serve_reward`` at ``url``: ``load_reward("http://host:port")`` builds one.

    It asks the server's ``/info`` at construction (a dead URL fails here, not at the first step) and splits
    batches larger than the server's ``max_batch``. A refused or reset connection is retried ``retries`` times
    with backoff (a server still starting); a timeout or an error answer is not.
    """

    def __init__(self, url: str, timeout: float = 300.0, retries: int = 3):
        self.url, self.timeout, self.retries = url.rstrip("/"), timeout, retries
        self.name = f"remote({self.url})"
        self.info = self.request("/info")
        self.max_batch = int(self.info["max_batch"])

    def score(self, prompts, responses, eos):
        scores = []
        for i in range(0, len(prompts), self.max_batch):
            batch = slice(i, i + self.max_batch)
            reply = self.request("/score", {"prompts": prompts[batch], "responses": responses[batch],
                                            "eos": eos[batch]})
            if not isinstance(reply.get("scores"), list):
                raise RewardError(f"the reward server at {self.url} answered without a list of scores: {reply}")
            scores += reply["scores"]
        return scores

    def request(self, path: str, payload: dict | None = None) -> dict:
        """GET ``path``, or POST ``payload`` as JSON to it; the JSON answer, or a RewardError naming the URL."""
        body = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    text = response.read()
                break
            except urllib.error.HTTPError as e:
                raise RewardError(f"the reward server at {self.url} answered {e.code} to {path}: "
                                  f"{_error_message(e)}") from None
            except OSError as e:  # URLError, a reset connection, a timeout
                reason = getattr(e, "reason", e)
                if attempt == self.retries or isinstance(reason, TimeoutError):
                    raise RewardError(f"cannot reach the reward server at {self.url} ({reason}); start one with "
                                      f"`rlhf serve-reward --reward SPEC`") from None
                time.sleep(0.5 * 2**attempt)
        try:
            return json.loads(text)
        except ValueError:
            raise RewardError(f"{self.url}{path} did not answer JSON; is it a reward server?") from None


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's ``{"error": ...}`` message, or the raw body of an answer from something else."""
    body = error.read().decode(errors="replace")
    try:
        return json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return body[:500] or error.reason


def serve(config) -> None:
    """``rlhf serve-reward``: serve ``config.reward`` (a ``ServeRewardConfig``) until Ctrl-C; prints the URL."""
    classifier = {"label": config.reward_label, "transform": config.reward_transform}
    server = serve_reward(config.reward, config.host, config.port, config.device, config.data, config.max_batch,
                          **(classifier if classifier != {"label": 0, "transform": "logit"} else {}))
    print(f"serving {server.reward.name} at {server.url}", flush=True)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
