"""Headless Chromium driven over the DevTools protocol, for the report's browser test.

Why CDP and not `--dump-dom`/`--screenshot`: those flags cannot tell when the charts finished rendering, and
console errors and uncaught exceptions reach stderr only as unstable log text. Over CDP the test waits for the
page's own `data-rendered` mark, collects `Runtime.exceptionThrown`, `Runtime.consoleAPICalled` (error) and
`Log.entryAdded` (error, e.g. a blocked request) as events, evaluates DOM queries and takes a screenshot, with
one small dependency (websocket-client) and Debian's `chromium`, no chromedriver to match versions with.

The network is off: every request goes to a proxy at a closed local port (`--proxy-server`), and
`--proxy-bypass-list=<-loopback>` keeps localhost behind it too, so anything the page tried to fetch fails and
shows up as a logged error.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--hide-scrollbars",
    "--proxy-bypass-list=<-loopback>",
)


def find_browser() -> str | None:
    """The path of a Chromium, or None."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PageResult:
    """What a page did while it loaded: problems it logged, the answers to queries, and how long it took."""

    errors: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall time from navigation to ready
    cpu_seconds: float = (
        0.0  # CPU time of the page's renderer process by then (less sensitive to a busy machine)
    )


class Chromium:
    """One headless Chromium with a fresh profile, ended on exit."""

    def __init__(self, binary: str, width: int = 1100, height: int = 900) -> None:
        # Chromium's helper processes may still write to the profile for a moment after the browser exits.
        self.profile = tempfile.TemporaryDirectory(prefix="gradcheck-chromium-", ignore_cleanup_errors=True)
        port, dead = _free_port(), _free_port()
        args = [
            binary, *FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={self.profile.name}",
            f"--proxy-server=http://127.0.0.1:{dead}", f"--window-size={width},{height}", "about:blank",
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{port}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(self.endpoint + "/json/version", timeout=1) as answer:
                    json.load(answer)
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    def __enter__(self) -> Chromium:  # noqa: PYI034 - py3.10 has no typing.Self
        return self

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.profile.cleanup()

    def load(
        self, url: str, queries: dict[str, str], *, ready: str, screenshot: Path | None = None
    ) -> PageResult:
        """Open `url`, wait until the expression `ready` is true, evaluate `queries`, collect errors."""
        import websocket  # websocket-client, in the test extra

        opener = urllib.request.Request(self.endpoint + "/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(opener, timeout=10) as answer:
            target = json.load(answer)
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        session = _Session(ws)
        try:
            for domain in ("Runtime", "Log", "Page", "Performance"):
                session.call(f"{domain}.enable")
            start = time.monotonic()
            session.call("Page.navigate", url=url)
            result = PageResult()
            result.seconds = session.wait_for(ready, timeout=30.0) - start
            metrics = {m["name"]: m["value"] for m in session.call("Performance.getMetrics")["metrics"]}
            result.cpu_seconds = float(metrics.get("ProcessTime", 0.0))
            result.values = {name: session.evaluate(expression) for name, expression in queries.items()}
            if screenshot is not None:
                shot = session.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            session.drain()
            result.errors = session.errors
            return result
        finally:
            ws.close()


class _Session:
    """Numbered CDP calls over one websocket; events seen while waiting are kept as errors when they are."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.errors: list[str] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self._event(message)

    def evaluate(self, expression: str) -> Any:
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> float:
        """Poll `expression` until true; the monotonic time it first was."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.evaluate(f"Boolean({expression})"):
                return time.monotonic()
            time.sleep(0.02)
        raise TimeoutError(f"page not ready after {timeout} s: {expression}; errors so far: {self.errors}")

    def drain(self) -> None:
        """Read the events already sent (a last round trip flushes them)."""
        self.call("Runtime.evaluate", expression="0")

    def _event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(
                f"exception: {details.get('exception', {}).get('description') or details.get('text')}"
            )
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
