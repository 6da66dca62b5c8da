"""A minimal client for OpenAI-compatible chat completion endpoints (OpenAI, Azure-style proxies, vLLM, llama.cpp).

Plain HTTP through `requests`: POST <base_url>/chat/completions with a Bearer key read from an environment variable.
The key is held only in the request header; every message this module produces has it redacted.
Retries with exponential backoff on 5xx / 408 / 429, timeouts, connection errors and malformed replies; any other
4xx fails at once (a wrong key or model name does not get better by waiting).
"""
from __future__ import annotations

import json
import logging
import os
import time

import requests

from eval.mtbench.data import MTBenchError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


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
        self._api_key = None
        if api_key_env:
            self._api_key = os.environ.get(api_key_env)
            if not self._api_key:
                raise MTBenchError(f"environment variable {api_key_env} is not set; put the judge endpoint's API key "
                                   "there, or name another variable with --api-key-env (an empty name sends no key)")
        self._session = requests.Session()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIChatClient(url={self.url!r}, model={self.model!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

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
            else:
                if response.status_code in RETRY_STATUS:
                    problem = f"HTTP {response.status_code}: {self._redact(response.text[:200])!r}"
                elif response.status_code >= 400:
                    raise JudgeEndpointError(f"judge endpoint {self.url} refused the request with HTTP "
                                             f"{response.status_code}: {self._redact(response.text[:300])!r}")
                else:
                    content, problem = _reply_content(response)
                    if content is not None:
                        return content
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
