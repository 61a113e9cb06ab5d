#!/usr/bin/env python3
"""The web console in a real browser: headless Chromium driven over WebDriver (Debian's
chromium and chromium-driver; the W3C protocol spoken with the standard library, no
Selenium) against real `spoold`s with data made by the `spool` CLI.

Checks: the overview lists the topics and the broker's health, with append and read rates charted from the
broker's history; a topic page shows the records produced; a
record holding markup is shown as text (nothing of it runs or renders); producing from
the page makes a record that the API's Read returns; a group's lag on its page is what
DescribeGroup says; a queue page redrives; with auth on, the page without a token shows
the login prompt and no data, and with one shows the topics. Screenshots of the main
pages go to target/console-screenshots/ (SCREENSHOTS to change).

Run through run.sh (it names the binaries). Exits 0 when every check passed.
"""

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPOOLD = str(ROOT / os.environ.get("SPOOL_BIN", "target/debug/spoold"))
SPOOL = str(ROOT / os.environ.get("SPOOL_CLI", "target/debug/spool"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
SHOTS = Path(os.environ.get("SCREENSHOTS", ROOT / "target" / "console-screenshots"))
# Seconds any wait may take: generous for loaded machines. Nothing asserts on time.
PATIENCE = 60.0
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def eventually(what, cond):
    """Polls `cond()` until it returns something truthy; fails after PATIENCE."""
    deadline = time.monotonic() + PATIENCE
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.05)


class Spoold:
    """A spoold on a fresh data directory and ephemeral ports."""

    def __init__(self, *args):
        self.dir = tempfile.mkdtemp(prefix="spool-console-")
        self.log = []
        self.proc = subprocess.Popen(
            [SPOOLD, "--data-dir", self.dir, "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "SPOOL_LOG": "info"})
        found = {}

        def drain():
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                m = re.search(r"serving.*grpc=(\S+).*metrics=http://([^/\s]+)/metrics", line)
                if m:
                    found["grpc"], found["admin"] = m.group(1), m.group(2)

        threading.Thread(target=drain, daemon=True).start()
        eventually("spoold serving", lambda: found or self.proc.poll() is not None)
        if not found:
            raise AssertionError("spoold did not start:\n" + "\n".join(self.log))
        self.grpc = "http://" + found["grpc"]
        self.url = "http://" + found["admin"]

    def cli(self, *args, stdin=None, token=None):
        env = {**os.environ}
        if token:
            env["SPOOL_TOKEN"] = token
        r = subprocess.run([SPOOL, "--server", self.grpc, *args], input=stdin, text=True,
                           capture_output=True, env=env, timeout=PATIENCE)
        assert r.returncode == 0, f"spool {' '.join(args)}: {r.stderr}"
        return r.stdout

    def api(self, path, token=None):
        req = urllib.request.Request(self.url + "/api/v1" + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=PATIENCE) as r:
            return json.load(r)

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Browser:
    """One headless Chromium session through chromedriver's W3C WebDriver endpoint."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        eventually("chromedriver ready", self._ready)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900"]},
        }}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _ready(self):
        try:
            return self._call("GET", "/status", base=True).get("ready")
        except (urllib.error.URLError, ConnectionError):
            return False

    def _call(self, method, path, body=None, base=False):
        url = self.base + (path if base or path == "/session" else f"/session/{self.session}{path}")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=PATIENCE) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"WebDriver {method} {path}: {e.read().decode()}") from None

    def go(self, url):
        self._call("POST", "/url", {"url": url})

    def js(self, script, *args):
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait(self, what, script, *args):
        """Waits until `script` (a function body) returns something truthy; returns it."""
        return eventually(what, lambda: self.js(script, *args))

    def find(self, css):
        return self._call("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css, text):
        self._call("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css):
        self._call("POST", f"/element/{self.find(css)}/click", {})

    def screenshot(self, name):
        SHOTS.mkdir(parents=True, exist_ok=True)
        png = base64.b64decode(self._call("GET", "/screenshot"))
        (SHOTS / f"{name}.png").write_bytes(png)

    def close(self):
        try:
            self._call("DELETE", "")
        finally:
            self.driver.terminate()


MARKUP = '<script>window.pwned = 1</script><b id="injected">bold</b>'


def test_pages_against_a_broker_with_data(browser):
    b = Spoold("--console-writes", "--console-sample-ms", "100")
    try:
        b.cli("topic", "create", "orders", "--partitions", "2")
        b.cli("topic", "create", "audit", "--partitions", "1")
        lines = "".join(json.dumps({"order": i, "total": i * 10}) + "\n" for i in range(30))
        b.cli("produce", "orders", "--partition", "0", "-q", stdin=lines)
        b.cli("produce", "audit", "-q", stdin=MARKUP + "\n")
        b.cli("offsets", "commit", "--group", "billing", "--topic", "orders", "--partition", "0", "--offset", "12")
        b.cli("queue", "create", "orders", "jobs")

        browser.go(b.url + "/")
        names = browser.wait("the topics listed", """
            const rows = document.querySelectorAll('#topics tbody tr');
            return rows.length ? Array.from(rows, r => r.cells[0].textContent) : null;""")
        assert names == ["audit", "orders", "orders.jobs.dlq"], names
        node = browser.js("return document.getElementById('node').textContent")
        assert "serving" in node and "console writes on" in node, node

        # Rates over time: once the history holds a few samples, each topic has a line.
        def charted():
            browser.go(f"{b.url}/?load={time.monotonic()}#/")  # a new URL: a fresh load
            return browser.wait("the topics again", """
                const rows = document.querySelectorAll('#topics tbody tr');
                return rows.length ? [document.querySelectorAll('#topics svg.chart polyline').length] : null;""")[0] >= 6
        eventually("a rate chart per topic", charted)
        browser.screenshot("overview")

        browser.go(b.url + "/#/topics/orders")
        values = browser.wait("the last records of partition 0", """
            const cells = document.querySelectorAll('#records .record-value');
            return cells.length ? Array.from(cells, c => c.textContent) : null;""")
        assert len(values) == 20, values
        assert json.loads(values[-1]) == {"order": 29, "total": 290}, values[-1]
        assert values[-1].startswith("{\n"), "JSON values are pretty-printed"
        browser.screenshot("topic")
        # From a time: before every record, the first 20; after them all, none.
        for when, expect in [("2000-01-01T00:00:00", "0"), ("2100-01-01T00:00:00", None)]:
            browser.js("""
                const f = document.getElementById('browse');
                document.getElementById('records').replaceChildren();
                f.from.value = 'time'; f.time.value = arguments[0];
                f.querySelector('button').click();""", when)
            first = browser.wait(f"records from {when}", """
                const r = document.getElementById('records');
                if (!r.firstChild) return null;
                const row = r.querySelector('tbody tr');
                return [row ? row.cells[0].textContent : null];""")
            assert first == [expect], (when, first)

        # A value holding markup is text: nothing renders, nothing runs.
        browser.go(b.url + "/#/topics/audit")
        shown = browser.wait("the markup record", """
            const c = document.querySelector('#records .record-value');
            return c ? c.textContent : null;""")
        assert shown == MARKUP, shown
        assert browser.js("return document.getElementById('injected') === null && window.pwned === undefined")

        # Produce from the page; the API's Read returns it.
        browser.type("#produce textarea", "made in the browser")
        browser.click("#produce button")
        said = browser.wait("the append confirmed", """
            const p = document.getElementById('produced');
            return p && p.textContent.includes('offset') ? p.textContent : null;""")
        assert "partition 0 at offset 1" in said, said
        read = b.api("/topics/audit/partitions/0/records?offset=1")
        assert [base64.b64decode(r["value"]).decode() for r in read["records"]] == ["made in the browser"]

        # The group's lag is DescribeGroup's.
        browser.go(b.url + "/#/groups/billing")
        lags = browser.wait("the group's partitions", """
            const t = document.querySelector('table.lag[data-topic="orders"]');
            return t ? Array.from(t.tBodies[0].rows, r => [r.cells[0].textContent, r.cells[3].textContent]) : null;""")
        described = b.api("/groups/billing")["topics"][0]["partitions"]
        assert lags == [[str(p["partition"]), f'{int(p["lag"]):,}'] for p in described], (lags, described)
        assert lags[0] == ["0", "18"], lags
        browser.screenshot("group")

        browser.go(b.url + "/#/queues/orders/jobs")
        browser.wait("the queue page", "return document.getElementById('redrive')")
        browser.click("#redrive")
        said = browser.wait("the redrive answered", """
            const p = document.getElementById('redrive-result');
            return p && p.textContent ? p.textContent : null;""")
        assert said.startswith("redriving dead letters"), said
        browser.screenshot("queue")
    finally:
        b.close()


def test_with_auth_on_a_page_without_a_token_shows_only_the_login(browser):
    d = tempfile.mkdtemp(prefix="spool-console-auth-")
    token = "console-secret"
    digest = subprocess.run([SPOOLD, "hash-token"], input=token, text=True,
                            capture_output=True, check=True).stdout.strip()
    config = Path(d) / "spool.toml"
    config.write_text(f'''[auth]
tokens = [{{ principal = "ops", sha256 = "{digest}" }}]
acl = [{{ principal = "ops", resource = "topic:*", operations = ["create", "describe", "read", "append"] }}]
''')
    b = Spoold("--config", str(config))
    try:
        b.cli("topic", "create", "secret-topic", "--partitions", "1", token=token)
        browser.go(b.url + "/")
        browser.js("sessionStorage.clear()")
        browser.go(b.url + "/#/")
        browser.js("location.reload()")
        browser.wait("the login prompt", "return document.getElementById('login')")
        assert "secret-topic" not in browser.js("return document.body.textContent")
        browser.screenshot("login")
        browser.type("#login input", token)
        browser.click("#login button")
        names = browser.wait("the topics after signing in", """
            const rows = document.querySelectorAll('#topics tbody tr');
            return rows.length ? Array.from(rows, r => r.cells[0].textContent) : null;""")
        assert names == ["secret-topic"], names
    finally:
        b.close()
        shutil.rmtree(d, ignore_errors=True)


TESTS = [test_pages_against_a_broker_with_data, test_with_auth_on_a_page_without_a_token_shows_only_the_login]


def main():
    for path in (SPOOLD, SPOOL, CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            print(f"console_test: {path} is not an executable", file=sys.stderr)
            return 2
    failed = 0
    browser = Browser()
    try:
        for test in TESTS:
            began = time.monotonic()
            try:
                test(browser)
                print(f"ok      {test.__name__} ({time.monotonic() - began:.1f}s)")
            except Exception as e:  # noqa: BLE001 - report every failure, then go on
                failed += 1
                print(f"FAILED  {test.__name__}: {e}", file=sys.stderr)
    finally:
        browser.close()
    print(f"{len(TESTS) - failed} passed, {failed} failed; screenshots in {SHOTS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
