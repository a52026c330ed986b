"""A small Chrome DevTools Protocol client over aiohttp's websocket: load a page in headless Chromium,
collect console errors and uncaught exceptions, evaluate expressions, take a screenshot."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
)  # fmt: skip


@dataclass
class PageResult:
    """What loading the page produced."""

    errors: list[str] = field(default_factory=list)
    """Console messages of level error, uncaught exceptions and failed loads."""
    values: dict[str, Any] = field(default_factory=dict)
    """The results of the expressions evaluated after load."""
    screenshot: bytes = b""


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.events: list[dict[str, Any]] = []
        self.load_event = asyncio.Event()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            else:
                self.events.append(data)
                if data.get("method") == "Page.loadEventFired":
                    self.load_event.set()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        await self.ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 60)
        if "error" in reply:
            raise RuntimeError(f"CDP {method}: {reply['error']}")
        return reply.get("result", {})


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            out.append("log: " + params["entry"].get("text", "") + " " + params["entry"].get("url", ""))
    return out


async def _drive(port: int, url: str, expressions: dict[str, str], width: int, height: int) -> PageResult:
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as response:
            target = await response.json(content_type=None)
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            session = _Session(ws)
            for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
                await session.call(domain)
            await session.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            await session.call("Page.navigate", url=url)
            await asyncio.wait_for(session.load_event.wait(), 60)
            await asyncio.sleep(0.5)  # let the viewer script and image decoding settle
            result = PageResult()
            for name, expression in expressions.items():
                value = await session.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
                if "exceptionDetails" in value:
                    raise RuntimeError(f"evaluating {name}: {value['exceptionDetails']}")
                result.values[name] = value["result"].get("value")
            shot = await session.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            result.screenshot = base64.b64decode(shot["data"])
            result.errors = _errors(session.events)
            session.reader.cancel()
            return result


def load_page(
    chromium: Path, page: Path, expressions: dict[str, str], width: int = 1280, height: int = 2400, timeout_s: float = 90.0
) -> PageResult:
    """Open ``page`` (a local file) in a fresh headless Chromium and return errors, values and a screenshot."""
    with tempfile.TemporaryDirectory(prefix="am3-chromium-") as profile:
        process = subprocess.Popen(
            [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout_s
            while not (port_file.exists() and port_file.read_text().strip()):
                if process.poll() is not None:
                    raise RuntimeError(f"chromium exited with status {process.returncode} before opening DevTools")
                if time.monotonic() > deadline:
                    raise RuntimeError("chromium did not open its DevTools port in time")
                time.sleep(0.1)
            port = int(port_file.read_text().splitlines()[0])
            return asyncio.run(asyncio.wait_for(_drive(port, page.resolve().as_uri(), expressions, width, height), timeout_s))
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
