"""The second LLM backend (``llm.backend: openai``): any OpenAI-compatible completions endpoint, memory-only mode.

Owns: ``OpenAIClient`` — an async client with the same ``generate`` / ``publish_adapter`` / ``health`` /
``shutdown`` surface as ``actors.llm_pool.LLMPool`` (the ``LLMClient`` contract of ``actors.contracts``), returning the same ``GenerationResult``; ``OpenAIBackendError``
— a failure that names the URL; ``best_choice`` — mapping free text onto one of the allowed choices.

It posts the raw prompt (text or token ids) to ``<base_url>/completions``; the agent builds its own prompt, so no
chat template is applied. It asks every server for ``logprobs=1``. When the server is vLLM (detected once from
``GET <base_url>/models``, ``owned_by == "vllm"``) it also asks for ``return_token_ids`` (prompt and output token
ids) and ``return_tokens_as_token_ids``, and forces ``choices`` with ``structured_outputs={"choice": [...]}``
(``guided_choice`` before vLLM 0.10.2; vLLM 0.32 ignores ``guided_choice``). Other servers get only standard
fields: token ids come back empty, and ``choices`` is applied after the fact by ``best_choice``.

    client = OpenAIClient(cfg.llm)          # cfg.llm.base_url = "http://127.0.0.1:8000/v1"
    result = await client.generate("You are in the kitchen. >", max_tokens=8, choices=["go north", "take coin"])
    await client.shutdown()
"""

from __future__ import annotations

import asyncio
import difflib
import os
import random
import re
from dataclasses import dataclass
from typing import Any

import httpx

from actors.contracts import GenerationResult
from actors.config import LLMConfig

PLACEHOLDER_KEY = "EMPTY"  # sent when the key variable is unset: local servers (vLLM, llama.cpp) accept anything
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIBackendError(RuntimeError):
    """The endpoint could not be reached or refused a request; the message names the URL."""


@dataclass
class ServerInfo:
    """What ``GET /models`` (and, on vLLM, ``GET /version``) told about the server."""

    models: list[str] | None  # served model ids; None when the server has no /models route
    vllm: bool
    version: tuple[int, ...] | None = None


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s/-]", " ", text.lower()).split())


def best_choice(text: str, choices: list[str]) -> str:
    """The choice that best matches generated ``text``: exact, then prefix, then closest by edit similarity."""
    norm = _norm(text)
    normed = [_norm(c) for c in choices]
    for c, n in zip(choices, normed):
        if n == norm:
            return c
    prefixed = [(len(n), i) for i, n in enumerate(normed) if n and norm.startswith(n)]
    if prefixed:  # the text is a choice followed by more words: take the longest such choice
        return choices[max(prefixed, key=lambda t: (t[0], -t[1]))[1]]
    scores = [difflib.SequenceMatcher(None, norm, n).ratio() for n in normed]
    return choices[max(range(len(choices)), key=lambda i: (scores[i], -i))]


def _parse_version(text: str) -> tuple[int, ...] | None:
    parts = re.findall(r"\d+", text.split("+")[0])[:3]
    return tuple(int(p) for p in parts) if parts else None


class OpenAIClient:
    """Async client for an OpenAI-compatible server. Same call surface as ``LLMPool``; picklable.

    The API key is read from the environment variable named by ``cfg.api_key_env`` when the client is made.
    A missing or empty variable is not an error: the placeholder key ``"EMPTY"`` is sent, which local servers
    that check no key accept; a server that needs a key then answers 401, raised as ``OpenAIBackendError``.
    ``cfg.seed`` seeds sampled requests (``seed + request counter``, so repeated prompts still differ);
    greedy requests (temperature 0) send no seed. Connection errors, timeouts, 429 and 5xx are retried
    ``retries`` times with exponential backoff from ``backoff_s``; other 4xx fail at once.
    """

    def __init__(self, cfg: LLMConfig, timeout_s: float = 120.0, connect_timeout_s: float = 5.0,
                 retries: int = 3, backoff_s: float = 0.25, max_connections: int = 256) -> None:
        if not cfg.base_url:
            raise ValueError("llm.backend: openai needs llm.base_url (e.g. http://127.0.0.1:8000/v1)")
        self.cfg = cfg
        self.base_url = cfg.base_url.rstrip("/")
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.retries, self.backoff_s, self.max_connections = retries, backoff_s, max_connections
        self.api_key = os.environ.get(cfg.api_key_env) or PLACEHOLDER_KEY
        self.server: ServerInfo | None = None
        self._logprobs_ok = True  # cleared if the server rejects the logprobs field
        self._requests = 0
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __getstate__(self) -> dict[str, Any]:  # the HTTP client is per process and per event loop
        return {**self.__dict__, "_http": None, "_loop": None}

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:  # an httpx pool cannot cross event loops
            self._http = httpx.AsyncClient(
                headers={"Authorization": f"Bearer {self.api_key}"},
                timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
                limits=httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=64))
            self._loop = loop
        return self._http

    async def _request(self, method: str, url: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """Send with bounded retries; returns any non-retryable response (the caller checks its status)."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1) * (1 + 0.25 * random.random()))
            try:
                response = await self._client().request(method, url, json=body)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.status_code not in _RETRY_STATUS:
                return response
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        raise OpenAIBackendError(f"OpenAI-compatible server at {url} failed after {self.retries + 1} attempts "
                                 f"({last}); is it running, and is llm.base_url right?")

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        response = await self._request(method, url, body)
        if response.status_code >= 400:
            raise OpenAIBackendError(f"{method} {url} answered HTTP {response.status_code}: {_error_text(response)}")
        return response.json()

    async def _probe(self) -> ServerInfo:
        """Ask the server once which models it serves and whether it is vLLM (cached)."""
        if self.server is not None:
            return self.server
        url = f"{self.base_url}/models"
        response = await self._request("GET", url)
        if response.status_code in (401, 403):
            raise OpenAIBackendError(f"GET {url} answered HTTP {response.status_code}: {_error_text(response)} "
                                     f"(API key from ${self.cfg.api_key_env})")
        models, vllm = None, False
        if response.status_code < 400:
            data = response.json().get("data") or []
            models = [str(m.get("id")) for m in data]
            vllm = any(m.get("owned_by") == "vllm" for m in data)
        version = None
        if vllm:  # /version lives at the server root, beside /v1
            root = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
            try:
                reply = await self._client().get(f"{root}/version")
                version = _parse_version(str(reply.json().get("version", ""))) if reply.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                version = None
        self.server = ServerInfo(models=models, vllm=vllm, version=version)
        return self.server

    async def generate(self, prompt: str | list[int], max_tokens: int = 16, temperature: float = 0.0,
                       top_p: float = 1.0, stop: list[str] | None = None,
                       choices: list[str] | None = None, min_tokens: int = 0,
                       adapter: bool = True) -> GenerationResult:
        """One completion. ``choices``: the returned text is exactly one of them (see the module docstring).
        ``min_tokens`` (vLLM servers only; ignored elsewhere) suppresses the end until that many tokens are out.
        ``adapter`` is accepted for the contract; this backend serves no adapter, so every answer is the base model's.

        ``logprobs`` holds one log-probability per generated token when the server returns them, else ``[]``;
        ``prompt_token_ids`` / ``output_token_ids`` are filled on vLLM, else ``[]`` (for a token-id prompt the
        prompt ids are the prompt itself). Without vLLM, a ``choices`` request's ``text`` is the matched choice
        while ids and logprobs describe what the model actually generated.
        """
        server = await self._probe()
        body: dict[str, Any] = {"model": self.cfg.model, "max_tokens": max_tokens, "temperature": temperature,
                                "top_p": top_p, "prompt": prompt if isinstance(prompt, str) else list(prompt)}
        if stop:
            body["stop"] = list(stop)
        if temperature > 0:
            body["seed"] = self.cfg.seed + self._requests
        self._requests += 1
        if self._logprobs_ok:
            body["logprobs"] = 1
        if server.vllm:
            body.update(return_token_ids=True, return_tokens_as_token_ids=True)
            if min_tokens:
                body["min_tokens"] = min_tokens
        if choices:
            choices = list(choices)
            # vLLM's grammar admits a choice spelled one byte per token: leave room for that plus the end token
            body["max_tokens"] = max(max_tokens, max(len(c.encode()) for c in choices) + 1)
            if server.vllm:
                if server.version is not None and server.version < (0, 10, 2):
                    body["guided_choice"] = choices
                else:
                    body["structured_outputs"] = {"choice": choices}
        data = await self._completion(body)
        return _to_result(data, prompt, choices)

    async def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/completions"
        response = await self._request("POST", url, body)
        if response.status_code == 400 and "logprobs" in body and "logprob" in response.text.lower():
            self._logprobs_ok = False  # this server does not do logprobs: stop asking
            body = {k: v for k, v in body.items() if k != "logprobs"}
            response = await self._request("POST", url, body)
        if response.status_code >= 400:
            raise OpenAIBackendError(f"POST {url} (model {self.cfg.model!r}) answered HTTP "
                                     f"{response.status_code}: {_error_text(response)}")
        data = response.json()
        if not data.get("choices"):
            raise OpenAIBackendError(f"POST {url} returned no choices: {str(data)[:300]}")
        return data

    async def publish_adapter(self, version: int, path: str) -> None:
        """Not available here: LoRA learning needs the project's own engines."""
        raise NotImplementedError("llm.backend: openai cannot serve LoRA adapters; LoRA learning "
                                  "(learner.enabled) needs llm.backend: vllm")

    async def health(self) -> dict[str, Any]:
        """Raises ``OpenAIBackendError`` if the server is unreachable or does not serve ``llm.model``."""
        self.server = None  # probe afresh
        server = await self._probe()
        if server.models is not None and self.cfg.model not in server.models:
            raise OpenAIBackendError(f"{self.base_url} serves {server.models}, not llm.model {self.cfg.model!r}")
        return {"backend": "openai", "base_url": self.base_url, "model": self.cfg.model, "vllm": server.vllm,
                "version": ".".join(map(str, server.version)) if server.version else None}

    async def shutdown(self) -> None:
        """Close the HTTP connections (the server itself is not ours to stop)."""
        http, self._http, self._loop = self._http, None, None
        if http is not None:
            await http.aclose()


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
    except (ValueError, AttributeError):
        pass
    return response.text[:500]


def _to_result(data: dict[str, Any], prompt: str | list[int], choices: list[str] | None) -> GenerationResult:
    choice = data["choices"][0]
    text = choice.get("text") or ""
    lp = choice.get("logprobs") or {}
    logprobs = [float(x) for x in lp.get("token_logprobs") or [] if x is not None]
    output_ids = list(choice.get("token_ids") or [])
    if not output_ids:  # return_tokens_as_token_ids spells each token "token_id:<n>"
        tokens = lp.get("tokens") or []
        if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            output_ids = [int(t.split(":", 1)[1]) for t in tokens]
    prompt_ids = list(choice.get("prompt_token_ids") or ([] if isinstance(prompt, str) else prompt))
    if choices and text not in choices:
        text = best_choice(text, choices)
    return GenerationResult(text=text, prompt_token_ids=prompt_ids, output_token_ids=output_ids,
                            logprobs=logprobs, adapter_version=0, finish_reason=choice.get("finish_reason"))
