#!/usr/bin/env python3
"""Open every page of the built book in headless Chromium and fail on what a reader would find broken.

A page fails when
- an image, stylesheet, script or other resource fails to load (seen by the browser), or a local
  `src`/`href` in the HTML points at a file that does not exist (also catches images the browser never
  requested, e.g. lazy ones below the fold);
- an image is broken (loaded but undecodable), or a JavaScript error is thrown while it loads;
- it has no heading, or its <title> does not carry that heading;
- it is a written chapter without a figure: a chapter is a page with notebook cells or the class
  `tprune-chapter` (the setup box of `tprune_core.book.show_setup`); stub chapters carry `tprune-stub` and are
  exempt;
- a notebook cell shows error output (a traceback, or an error printed to stderr).
A screenshot of every page is saved under the screenshot folder (default `_build/site-check/`).

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`), so only the standard
library is needed. Debian's `chromium` is installed with apt-get when missing.

    python tools/site_check.py [HTML_DIR] [--screenshots DIR] [--no-browser]

HTML_DIR defaults to the folder of the last `tprune book` build (_build/last-build.json), else _build/html.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         # containers often have a tiny /dev/shm; keeps the renderer from crashing there
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]
VIEWPORT = (1280, 900)
MAX_SHOT_HEIGHT = 8000
PAGE_TIMEOUT = 30.0
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static"}
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^\s*\w*(Error|Exception)\b[^\n]*:", re.M)


class SiteCheckError(Exception):
    pass


# --------------------------------------------------------------------------------------------- chromium

def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium(install: bool = True) -> str:
    """Path of a Chromium binary; installs Debian's `chromium` with apt-get when none is found."""
    found = find_chromium()
    if found or not install:
        if not found:
            raise SiteCheckError("no chromium found on PATH (install Debian's `chromium` package)")
        return found
    if shutil.which("apt-get") is None:
        raise SiteCheckError("no chromium found and no apt-get to install it; install Chromium and retry")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        raise SiteCheckError("no chromium found; installing it needs root: `apt-get install -y chromium`")
    print("site-check: installing chromium with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (sudo + ["apt-get", "update"], sudo + ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SiteCheckError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    found = find_chromium()
    if not found:
        raise SiteCheckError("apt-get installed chromium but no chromium binary is on PATH")
    return found


class Browser:
    """Headless Chromium speaking the DevTools protocol over fds 3 (commands in) and 4 (replies out)."""

    def __init__(self, exe: str, log_path: Path):
        self._profile = tempfile.mkdtemp(prefix="site-check-profile-")  # a fresh --user-data-dir
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def child():  # runs in the forked child before exec: put the pipe ends at fds 3 and 4
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.close(a)
            os.close(b)

        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
                                      "about:blank"], stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, preexec_fn=child, close_fds=False)
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _send(self, msg: dict) -> None:
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._cmd_w, data):]

    def _recv(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._out_r], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise SiteCheckError(f"chromium exited (code {self.proc.poll()}); see {self._log.name}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = PAGE_TIMEOUT) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._send(msg)
        deadline = time.monotonic() + timeout
        while True:
            reply = self._recv(max(0.0, deadline - time.monotonic()))
            if reply is None:
                raise SiteCheckError(f"chromium did not answer {method} within {timeout:.0f} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise SiteCheckError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if any(e["method"] == name for e in self.events):
                return True
            msg = self._recv(max(0.0, deadline - time.monotonic()))
            if msg is None:
                return False
            if "method" in msg:
                self.events.append(msg)

    def drain(self, quiet: float = 0.3, limit: float = 3.0) -> None:
        """Collect events until none arrive for `quiet` seconds (late requests made by scripts)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            msg = self._recv(quiet)
            if msg is None:
                return
            if "method" in msg:
                self.events.append(msg)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (SiteCheckError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)


# JavaScript evaluated in each loaded page: the facts the checks need.
PAGE_FACTS = r"""
(() => {
  const main = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const h1 = [...main.querySelectorAll('h1')].find(h => !h.closest('.onlyprint') && h.innerText.trim());
  const imgs = [...main.querySelectorAll('img')];
  const outputs = [...document.querySelectorAll('.cell_output .output')];
  return {
    title: document.title,
    heading: h1 ? h1.innerText.replace(/[#¶\s]+$/, '').trim() : null,
    chapter: !!document.querySelector('.tprune-chapter') || !!main.querySelector('div.cell'),
    stub: !!document.querySelector('.tprune-stub'),
    figures: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    images: imgs.length,
    broken: imgs.filter(i => i.complete && i.naturalWidth === 0).map(i => i.getAttribute('src')),
    errors: outputs.filter(o => o.classList.contains('traceback') || o.classList.contains('error'))
                   .map(o => o.innerText.slice(0, 300)),
    stderr: outputs.filter(o => o.classList.contains('stderr')).map(o => o.innerText.slice(0, 2000)),
    height: Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0),
  };
})()
"""


def browse(browser: Browser, session: str, page: Path, shot: Path | None) -> tuple[dict, list[str]]:
    """Load one page; return its facts and the load failures seen by the browser."""
    browser.events.clear()
    nav = browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session)
    problems = []
    if nav.get("errorText"):
        return {}, [f"page did not load: {nav['errorText']}"]
    if not browser.wait_event("Page.loadEventFired", PAGE_TIMEOUT):
        problems.append(f"load event not fired within {PAGE_TIMEOUT:.0f} s")
    browser.drain()
    urls = {}
    for event in browser.events:
        method, p = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            urls[p["requestId"]] = p["request"]["url"]
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            url = urls.get(p["requestId"], "?")
            problems.append(f"failed to load {_short(url, page)}: {p.get('errorText', '')}"
                            + (f" ({p['blockedReason']})" if p.get("blockedReason") else ""))
        elif method == "Network.responseReceived" and p["response"].get("status", 0) >= 400:
            problems.append(f"HTTP {p['response']['status']} for {_short(p['response']['url'], page)}")
        elif method == "Runtime.exceptionThrown":
            details = p.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            problems.append(f"JavaScript error: {text.splitlines()[0] if text else '?'}")
    facts = browser.call("Runtime.evaluate", {"expression": PAGE_FACTS, "returnByValue": True}, session)
    if "exceptionDetails" in facts:
        raise SiteCheckError(f"{page}: evaluating the page facts failed: {facts['exceptionDetails']}")
    facts = facts["result"]["value"]
    if shot is not None:
        # the whole page (up to MAX_SHOT_HEIGHT): make the viewport as tall as the page, then restore it
        height = max(VIEWPORT[1], min(int(facts.get("height") or VIEWPORT[1]), MAX_SHOT_HEIGHT))
        set_viewport(browser, session, height)
        try:
            image = browser.call("Page.captureScreenshot", {"format": "png"}, session, timeout=60)
        finally:
            set_viewport(browser, session, VIEWPORT[1])
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.write_bytes(base64.b64decode(image["data"]))
    return facts, problems


def set_viewport(browser: Browser, session: str, height: int) -> None:
    browser.call("Emulation.setDeviceMetricsOverride", {"width": VIEWPORT[0], "height": height,
                                                        "deviceScaleFactor": 1, "mobile": False}, session)


def _short(url: str, page: Path) -> str:
    if url.startswith("file://"):
        try:
            return os.path.relpath(unquote(urlsplit(url).path), page.parent)
        except ValueError:
            pass
    return url


# --------------------------------------------------------------------------------------------- static checks

class _Refs(HTMLParser):
    ATTRS = {"img": ("src",), "script": ("src",), "link": ("href",), "source": ("src",), "iframe": ("src",),
             "a": ("href",), "video": ("src", "poster"), "audio": ("src",), "embed": ("src",)}

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.title = ""
        self.redirect = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in self.ATTRS.get(tag, ()):
            if attrs.get(name):
                self.refs.append((tag, attrs[name]))
        if tag == "img" and attrs.get("srcset"):
            self.refs += [("img", part.strip().split()[0]) for part in attrs["srcset"].split(",") if part.strip()]
        if tag == "title":
            self._in_title = True
        if tag == "meta" and (attrs.get("http-equiv") or "").lower() == "refresh":
            match = re.search(r"url=(.+)$", attrs.get("content") or "", re.I)
            self.redirect = match.group(1).strip().strip("'\"") if match else ""

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def parse_page(page: Path) -> _Refs:
    parser = _Refs()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    return parser


def static_problems(page: Path, parsed: _Refs) -> list[str]:
    """Local src/href references of the page that do not resolve to a file."""
    problems = []
    for tag, ref in parsed.refs + ([("meta refresh", parsed.redirect)] if parsed.redirect else []):
        parts = urlsplit(ref)
        if parts.scheme not in ("", "file") or parts.netloc or not parts.path:
            continue  # external links, mailto:, data:, pure #anchors
        target = Path(unquote(parts.path)) if parts.scheme == "file" else page.parent / unquote(parts.path)
        if not target.exists():
            problems.append(f"<{tag}> points at missing file {ref}")
    return problems


def fact_problems(facts: dict) -> list[str]:
    """What the page facts gathered in the browser say is wrong."""
    problems = []
    title, heading = (facts.get("title") or "").strip(), facts.get("heading")
    if not title or "<no title>" in title:
        problems.append(f"page has no title (<title> is {title!r})")
    if not heading:
        problems.append("page has no heading (h1)")
    elif heading not in title:
        problems.append(f"<title> {title!r} does not carry the page heading {heading!r}")
    for src in facts.get("broken", []):
        problems.append(f"broken image {src}")
    if facts.get("chapter") and not facts.get("stub") and not facts.get("figures"):
        problems.append("written chapter without a figure (a stub must carry the tprune-stub marker)")
    for text in facts.get("errors", []):
        problems.append(f"error output in a cell: {text.strip().splitlines()[0] if text.strip() else '?'}")
    for text in facts.get("stderr", []):
        match = ERROR_TEXT.search(text)
        if match:
            problems.append(f"error printed in a cell: {match.group(0).strip()}")
    return problems


def static_facts(page: Path) -> dict:
    """The same facts as PAGE_FACTS, read from the HTML without a browser (used by --no-browser)."""
    html = page.read_text(encoding="utf-8", errors="replace")
    body = re.search(r"<article[^>]*bd-article[^>]*>(.*)</article>", html, re.S)
    main = body.group(1) if body else html
    main = re.sub(r'<div id="jb-print-docs-body" class="onlyprint">.*?</div>', "", main, flags=re.S)
    h1 = re.search(r"<h1[^>]*>(.*?)</h1>", main, re.S)
    heading = re.sub(r"<a class=\"headerlink\".*?</a>", "", h1.group(1), flags=re.S) if h1 else ""
    heading = re.sub(r"<[^>]+>", "", heading).strip()
    outputs = re.findall(r'<div class="output ([^"]*)"[^>]*>(.*?)</div>', main, re.S)
    return {
        "title": unescape(parse_page(page).title.strip()),
        "heading": unescape(heading) or None,
        "chapter": "tprune-chapter" in html or bool(re.search(r'<div class="cell\b', main)),
        "stub": "tprune-stub" in html,
        "figures": len(re.findall(r"<img\b", main)),
        "broken": [],
        "errors": [unescape(re.sub(r"<[^>]+>", "", t)) for c, t in outputs if {"traceback", "error"} & set(c.split())],
        "stderr": [unescape(re.sub(r"<[^>]+>", "", t)) for c, t in outputs if "stderr" in c.split()],
    }


# --------------------------------------------------------------------------------------------- the check

def html_pages(html_dir: Path) -> list[Path]:
    return sorted(p for p in html_dir.rglob("*.html")
                  if not (set(p.relative_to(html_dir).parts[:-1]) & SKIP_DIRS))


def check_site(html_dir, screenshots=None, browser: bool = True, chromium: str | None = None,
               log=print) -> dict[str, list[str]]:
    """Check every page; returns {page path relative to html_dir: [problems]} for all pages."""
    html_dir = Path(html_dir).resolve()
    pages = html_pages(html_dir)
    if not pages:
        raise SiteCheckError(f"{html_dir}: no .html pages (build the book first: make book)")
    shots = Path(screenshots).resolve() if screenshots else None
    if shots is not None:
        shutil.rmtree(shots, ignore_errors=True)
        shots.mkdir(parents=True)
    report: dict[str, list[str]] = {}
    chrome = session = None
    try:
        if browser:
            exe = chromium or ensure_chromium()
            chrome = Browser(exe, (shots or Path(tempfile.gettempdir())) / "chromium.log")
            target = chrome.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = chrome.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for method in ("Page.enable", "Network.enable", "Runtime.enable"):
                chrome.call(method, session=session)
            set_viewport(chrome, session, VIEWPORT[1])
        for page in pages:
            rel = page.relative_to(html_dir).as_posix()
            parsed = parse_page(page)
            problems = static_problems(page, parsed)
            if parsed.redirect is not None:  # a redirect stub (index.html): only its target must exist
                if not parsed.redirect:
                    problems.append("refresh redirect without a target")
            elif chrome is not None:
                shot = shots / Path(rel).with_suffix(".png") if shots is not None else None
                facts, seen = browse(chrome, session, page, shot)
                problems += seen + (fact_problems(facts) if facts else [])
            else:
                problems += fact_problems(static_facts(page))
            report[rel] = list(dict.fromkeys(problems))  # keep order, drop duplicates
            log(("FAIL " if report[rel] else "ok   ") + rel + "".join(f"\n     - {p}" for p in report[rel]))
    finally:
        if chrome is not None:
            chrome.close()
    return report


def default_html_dir(root: Path = ROOT) -> Path:
    marker = root / "_build" / "last-build.json"
    if marker.is_file():
        try:
            return Path(json.loads(marker.read_text())["html"])
        except (ValueError, KeyError):
            raise SiteCheckError(f"{marker}: unreadable; rebuild the book (make book)") from None
    return root / "_build" / "html"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html_dir", nargs="?", help="built site (default: the last `make book`)")
    parser.add_argument("--screenshots", default=str(ROOT / "_build" / "site-check"),
                        help="folder for one PNG per page (emptied first); default _build/site-check")
    parser.add_argument("--no-browser", action="store_true", help="static checks only (no Chromium)")
    parser.add_argument("--chromium", help="Chromium binary (default: found on PATH, else installed)")
    args = parser.parse_args(argv)
    try:
        html_dir = Path(args.html_dir) if args.html_dir else default_html_dir()
        print(f"site-check: {html_dir}", flush=True)
        start = time.monotonic()
        report = check_site(html_dir, None if args.no_browser else args.screenshots,
                            browser=not args.no_browser, chromium=args.chromium)
    except SiteCheckError as exc:
        print(f"site-check: error: {exc}", file=sys.stderr)
        return 2
    failed = {page: probs for page, probs in report.items() if probs}
    shots = "" if args.no_browser else f"; screenshots in {args.screenshots}"
    print(f"site-check: {len(report)} pages, {len(failed)} failing, {time.monotonic() - start:.0f} s{shots}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
