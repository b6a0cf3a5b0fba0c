"""A headless Chromium driven over the DevTools protocol, with no dependency beyond the browser.

Chromium's `--remote-debugging-pipe` reads protocol commands (JSON, each ended by a NUL byte) from
file descriptor 3 and writes replies and events to descriptor 4, the transport Puppeteer uses; so no
websocket client is needed. Used by tests/test_report_html.py to load the HTML report, collect console
errors, wait for every <video> to become playable and take a screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """$LSA_CHROMIUM, else the first of CANDIDATES on PATH (Debian's package installs /usr/bin/chromium)."""
    env = os.environ.get("LSA_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class ProtocolError(RuntimeError):
    pass


class Chromium:
    """`with Chromium(path) as b: page = b.open(url)`: a fresh profile, killed on exit."""

    def __init__(self, binary: str, width: int = 1400, height: int = 900):
        self.binary, self.width, self.height = binary, width, height
        self.events: list[dict] = []
        self._id = 0
        self._buf = b""

    def __enter__(self):
        self._profile = tempfile.mkdtemp(prefix="lsa-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            self.binary,
            "--headless=new",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--mute-audio",
            "--autoplay-policy=no-user-gesture-required",
            f"--window-size={self.width},{self.height}",
            "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self._log = Path(self._profile) / "stderr.log"
        # posix_spawn places the pipe ends at the browser's fd 3 (commands in) and 4 (replies out)
        # without running Python in the child (a preexec_fn is unsafe in a process with threads)
        self.pid = os.posix_spawn(
            self.binary,
            args,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, to_browser_r, 3),
                (os.POSIX_SPAWN_DUP2, from_browser_w, 4),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, str(self._log), os.O_WRONLY | os.O_CREAT, 0o600),
            ],
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        return self

    def _exited(self, timeout: float) -> int | None:
        """The browser's exit status once it has exited within `timeout` seconds, else None."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def __exit__(self, *exc):
        try:
            self.send("Browser.close", timeout=5)
        except (ProtocolError, OSError):
            pass
        if getattr(self, "returncode", None) is None and self._exited(10) is None:
            os.kill(self.pid, signal.SIGKILL)
            self._exited(10)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    # ------------------------------------------------------------------ protocol
    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30):
        """One command; returns its result (events that arrive meanwhile are kept in self.events)."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._recv(deadline)
            if m is None:
                raise ProtocolError(f"{method}: no reply within {timeout} s")
            if m.get("id") == self._id:
                if "error" in m:
                    raise ProtocolError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def _recv(self, deadline: float) -> dict | None:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                return None
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                log = self._log.read_text(errors="replace")[-2000:] if self._log.exists() else ""
                raise ProtocolError(f"the browser closed the pipe (exit {self._exited(5)}): {log}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def pump(self, seconds: float) -> None:
        """Collect events for `seconds`."""
        deadline = time.monotonic() + seconds
        while (m := self._recv(deadline)) is not None:
            self.events.append(m)

    # ------------------------------------------------------------------ pages
    def open(self, url: str, timeout: float = 30) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )
        page.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session for e in self.events):
            if time.monotonic() > deadline:
                raise ProtocolError(f"{url}: no load event within {timeout} s")
            self.pump(0.2)
        return page


class Page:
    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None, timeout: float = 30):
        return self.browser.send(method, params, self.session, timeout)

    def evaluate(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise ProtocolError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (failed loads) of this page so far."""
        out = []
        for e in self.browser.events:
            if e.get("sessionId") != self.session:
                continue
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif e.get("method") == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                out.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        return out

    def wait_videos(self, timeout: float = 30) -> list[dict]:
        """Every <video>'s state once all can play through (readyState >= 3) or one failed or time ran out."""
        js = (
            "Array.from(document.querySelectorAll('video')).map(v => ({src: v.currentSrc || v.src, "
            "readyState: v.readyState, error: v.error ? v.error.code + ' ' + v.error.message : null, "
            "width: v.videoWidth, height: v.videoHeight, duration: v.duration}))"
        )
        deadline = time.monotonic() + timeout
        while True:
            states = self.evaluate(js)
            if (
                all(s["readyState"] >= 3 for s in states)
                or any(s["error"] for s in states)
                or time.monotonic() > deadline
            ):
                return states
            self.browser.pump(0.25)

    def screenshot(self, path: str | Path) -> Path:
        """A PNG of the whole page (the viewport grown to the page's height)."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.browser.width, "height": max(height, 100), "deviceScaleFactor": 1, "mobile": False},
        )
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path
