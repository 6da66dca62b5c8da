"""A minimal client for OpenAI-compatible chat completion endpoints (OpenAI, Azure-style proxies, vLLM, llama.cpp).

Plain HTTP through `requests`: POST <base_url>/chat/completions with a Bearer key read from an environment variable.
The key is stripped of surrounding whitespace (a key read from a file ends in a newline) and checked to be a header-safe
token before any request. It is held only in the request header: every message this module produces, every exception
it raises and every reply it returns (replies are saved in judgment files) goes through `redact`, which removes the
key and any `Authorization` / `Bearer` value (a proxy that echoes the request headers cannot leak it either).
Retries with exponential backoff on 5xx / 408 / 429, timeouts, connection errors and malformed replies; any other
4xx fails at once (a wrong key or model name does not get better by waiting).
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time

import requests

from eval.mtbench.data import MTBenchError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
REDACTED = "***"
# "Authorization: <anything up to the end of the value>" in headers, JSON ("authorization": "...") or Python reprs
# ('Authorization': '...'), and a bare "Bearer <token>"
_AUTH_VALUE = re.compile(r"""(?i)(authorization["']?\s*[:=]\s*["']?)([^"'\r\n,}]+)""")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',}]+")
_SECRETS: set[str] = set()  # every key a client of this process has read
_SECRETS_LOCK = threading.Lock()


def redact(text: str) -> str:
    """`text` without any API key read in this process and without Authorization / Bearer values."""
    text = str(text)
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _AUTH_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    return _BEARER.sub(lambda m: m.group(1) + REDACTED, text)


def read_api_key(env_name: str) -> str:
    """The key in environment variable `env_name`, stripped of surrounding whitespace and checked to be one token of
    visible ASCII (what an HTTP header can carry); the error names the variable and the problem, never the key."""
    raw = os.environ.get(env_name)
    if raw is None:
        raise MTBenchError(f"environment variable {env_name} is not set; put the judge endpoint's API key there, or "
                           "name another variable with --api-key-env (an empty name sends no key)")
    key = raw.strip()
    if key:
        with _SECRETS_LOCK:
            _SECRETS.update({raw, key})  # redact the key as given too (with its newline) wherever it may show up
    if not key:
        raise MTBenchError(f"environment variable {env_name} is empty (or only whitespace); it must hold the judge "
                           "endpoint's API key")
    bad = next((i for i, ch in enumerate(key) if not 0x21 <= ord(ch) <= 0x7E), None)
    if bad is not None:
        kind = "a space" if key[bad] == " " else ("a control character" if ord(key[bad]) < 0x20 or ord(key[bad]) == 0x7F
                                                  else "a non-ASCII character")
        raise MTBenchError(f"the API key in {env_name} has {kind} at position {bad + 1} of {len(key)}; an HTTP header "
                           "carries only visible ASCII: check how the variable was set")
    return key


class JudgeEndpointError(MTBenchError):
    """The endpoint failed for good: refused the request, or stayed down / kept answering nonsense after retries."""


class OpenAIChatClient:
    """complete(messages) -> the assistant's reply text, for one model on one endpoint."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 2048, timeout_s: float = 120.0, max_retries: int = 6,
                 backoff_s: float = 2.0, max_backoff_s: float = 60.0):
        if not base_url.startswith(("http://", "https://")):
            raise MTBenchError(f"base URL must start with http:// or https:// (got {base_url!r}), "
                               "e.g. https://api.openai.com/v1")
        if max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise MTBenchError("max_retries must be >= 0, timeout_s > 0 and backoff_s >= 0")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._api_key = read_api_key(api_key_env) if api_key_env else None
        self._session = requests.Session()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIChatClient(url={self.url!r}, model={self.model!r})"

    @staticmethod
    def _redact(text: str) -> str:
        return redact(text)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after:
            try:
                delay = min(self.max_backoff_s, max(delay, float(retry_after)))
            except ValueError:
                pass  # an HTTP-date; the exponential delay is good enough
        return delay

    def complete(self, messages: list[dict]) -> str:
        """The reply text, redacted (see the module docstring); JudgeEndpointError (redacted) when it fails for good."""
        try:
            return self._complete(messages)
        except JudgeEndpointError:
            raise
        except Exception as err:  # anything requests or the JSON layer raises: its text may quote the headers
            raise JudgeEndpointError(f"judge endpoint {self.url}: {type(err).__name__}: {redact(err)}") from None

    def _complete(self, messages: list[dict]) -> str:
        body = {"model": self.model, "messages": messages, "n": 1, "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        problem = "no attempt made"
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                response = self._session.post(self.url, json=body, headers=self._headers(), timeout=self.timeout_s)
            except requests.Timeout:
                problem = f"timed out after {self.timeout_s:g} s"
            except requests.ConnectionError as err:
                problem = f"connection error ({type(err).__name__})"
            except requests.RequestException as err:  # e.g. an invalid header or URL: waiting does not help
                raise JudgeEndpointError(f"judge endpoint {self.url}: the request could not be sent: "
                                         f"{type(err).__name__}: {redact(err)}") from None
            else:
                if response.status_code in RETRY_STATUS:
                    problem = f"HTTP {response.status_code}: {self._redact(response.text[:200])!r}"
                elif response.status_code >= 400:
                    raise JudgeEndpointError(f"judge endpoint {self.url} refused the request with HTTP "
                                             f"{response.status_code}: {self._redact(response.text[:300])!r}")
                else:
                    content, problem = _reply_content(response)
                    if content is not None:
                        return redact(content)  # saved verbatim in the judgment file
                    problem = self._redact(problem)
            if attempt < self.max_retries:
                delay = self._delay(attempt, response)
                log.warning("judge endpoint %s: %s; retry %d/%d in %.1f s", self.url, problem, attempt + 1,
                            self.max_retries, delay)
                time.sleep(delay)
        raise JudgeEndpointError(f"judge endpoint {self.url} failed {self.max_retries + 1} times in a row; "
                                 f"last problem: {problem}")


def _reply_content(response: requests.Response) -> tuple[str | None, str]:
    """(reply text, '') for a well-formed chat completion, else (None, what was wrong with it)."""
    try:
        data = response.json()
    except (json.JSONDecodeError, ValueError):
        return None, f"reply is not JSON: {response.text[:200]!r}"
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None, f"reply has no choices[0].message.content: {json.dumps(data)[:200]}"
    if not isinstance(content, str):
        return None, f"reply content is {type(content).__name__}, not text"
    return content, ""
