"""The labelling page in a real headless Chromium (Debian's package, driven by Playwright) against the real server
(`rlhf label serve`, uvicorn) in its own process: label by clicks and keys, kill and restart the server, two
labellers at once, model text shown as text, bad posts refused, loopback only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tasks.labelling.store import read_labels
from tests.pipeline.smoke_project import BIN_DIR, OFFLINE_ENV, free_port, wait_healthy

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
SCRIPT_RESPONSE = '<script>window.pwned = 1</script><b id="injected">bold?</b> & "quotes"'
# Chromium flags for a closed network and a root user (no sandbox), as the machine's notes advise.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _pairs(count: int) -> list[dict]:
    pairs = [
        {
            "pair_id": f"p{i:02d}",
            "prompt": f"Review number {i}:",
            "response_a": f"first answer {i}",
            "response_b": f"second answer {i}",
            "model_a": "models/sft@000000000000",
            "model_b": "models/ppo@111111111111",
        }
        for i in range(count)
    ]
    pairs[1]["response_b"] = SCRIPT_RESPONSE
    return pairs


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    queue, labels = tmp_path / "queue.jsonl", tmp_path / "human" / "preferences.jsonl"
    queue.write_text("".join(json.dumps(pair) + "\n" for pair in _pairs(6)))
    return queue, labels


class LabelServer:
    """`rlhf label serve` in its own process; `kill` is SIGKILL, `start` reuses the port."""

    def __init__(self, queue: Path, labels: Path) -> None:
        self.queue, self.labels, self.port = queue, labels, free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [BIN_DIR / "rlhf", "label", "serve", "--port", str(self.port)]
        command += ["--queue", str(self.queue), "--labels", str(self.labels)]
        log = self.queue.parent / "server.log"
        with log.open("a") as out:
            env = os.environ | OFFLINE_ENV
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_healthy(self.url, self.process, log)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def server(files):
    started = LabelServer(*files)
    started.start()
    yield started
    started.kill()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail("the browser tests need Debian's chromium package: apt-get install chromium (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@contextmanager
def labeller(browser, url: str, name: str):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(url)
    page.fill("#labeller", name)
    page.press("#labeller", "Enter")
    try:
        yield page
    finally:
        context.close()


def _shown(page) -> tuple[str, str, str]:
    """(prompt, left, right) once a pair is on the page and the buttons are live."""
    page.wait_for_selector("#buttons button:not([disabled])")
    return page.text_content("#prompt"), page.text_content("#left"), page.text_content("#right")


def _label(page, how: str) -> tuple[str, str, str]:
    """Label the pair on show by a click or key; returns what was shown, after the page moved on."""
    shown = _shown(page)
    before = page.text_content("#progress-text")
    if how.startswith("click:"):
        page.click(f"#buttons button[data-choice={how.removeprefix('click:')}]")
    else:
        page.keyboard.press(how.removeprefix("key:"))
    page.wait_for_function("text => document.getElementById('progress-text').textContent !== text", arg=before)
    return shown


def _winner_text(label: dict) -> str | None:
    return label[f"response_{label['choice']}"] if label["choice"] in ("a", "b") else None


def test_a_queue_is_labelled_by_clicks_and_keys_and_each_label_records_what_was_shown(server, browser, tmp_path):
    with labeller(browser, server.url, "ada") as page:
        page.screenshot(path=tmp_path / "labelling.png")
        assert (tmp_path / "labelling.png").stat().st_size > 10_000
        ways = ["click:left", "key:b", "click:tie", "key:s", "key:A", "click:right"]
        shown = [_label(page, how) for how in ways]
        page.wait_for_function("document.getElementById('message').textContent.includes('All pairs are labelled')")
        assert page.text_content("#progress-text") == "6 / 6 labelled"
    labels = read_labels(server.labels)
    assert [label["pair_id"] for label in labels] == [f"p{i:02d}" for i in range(6)]  # queue order
    expected = ["left", "right", "tie", "skip", "left", "right"]
    for label, (prompt, left, right), side in zip(labels, shown, expected, strict=True):
        assert label["prompt"] == prompt and label["labeller"] == "ada"
        assert {label["response_a"], label["response_b"]} == {left, right}
        # The side order on screen is recorded, and the stored winner is the response that was on the chosen side.
        assert (label["response_a"] == left) == (label["left"] == "a")
        assert _winner_text(label) == {"left": left, "right": right}.get(side)
        assert label["choice"] in ("a", "b") if side in ("left", "right") else label["choice"] == side
        assert label["model_a"] == "models/sft@000000000000" and label["time"].endswith("+00:00")


def test_model_text_with_html_renders_as_text(server, browser):
    with labeller(browser, server.url, "ada") as page:
        _label(page, "key:s")
        _shown(page)
        assert SCRIPT_RESPONSE in (page.text_content("#left"), page.text_content("#right"))
        assert page.evaluate("window.pwned") is None
        assert page.query_selector("#injected") is None


def test_a_killed_server_loses_and_repeats_no_label_and_the_queue_resumes_where_it_was(server, browser):
    with labeller(browser, server.url, "ada") as page:
        for _ in range(3):
            _label(page, "key:a")
        server.kill()
        page.keyboard.press("b")  # this label cannot reach the server
        page.wait_for_function("document.getElementById('message').textContent.includes('not answering')")
        assert len(read_labels(server.labels)) == 3
        server.start()
        prompt, _, _ = _shown(page)  # the page found the server again by itself
        assert prompt == "Review number 3:"  # the first pair without a label
        assert page.text_content("#progress-text") == "3 / 6 labelled"
        for _ in range(3):
            _label(page, "key:b")
    labels = read_labels(server.labels)
    assert [label["pair_id"] for label in labels] == [f"p{i:02d}" for i in range(6)]


def test_two_labellers_at_once_never_get_the_same_pair(server, browser):
    with labeller(browser, server.url, "ada") as first, labeller(browser, server.url, "bob") as second:
        for _ in range(3):
            shown_first, shown_second = _shown(first), _shown(second)
            assert shown_first[0] != shown_second[0]  # each holds its own pair
            _label(first, "key:a")
            _label(second, "key:b")
        first.wait_for_function("document.getElementById('message').textContent.includes('All pairs are labelled')")
    labels = read_labels(server.labels)
    assert sorted(label["pair_id"] for label in labels) == [f"p{i:02d}" for i in range(6)]
    assert {label["labeller"] for label in labels} == {"ada", "bob"}


def _post(url: str, body: bytes, path: str = "api/labels") -> int:
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(f"{url}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_bad_posts_are_refused_and_write_nothing(server):
    good = {"pair_id": "p00", "session": "s1", "labeller": "ada", "order": "ab", "choice": "left"}
    assert _post(server.url, json.dumps(good).encode()) == 201
    before = server.labels.read_bytes()
    refused = {
        "already labelled": (good, 409),
        "unknown pair": (good | {"pair_id": "nope"}, 404),
        "bad choice": (good | {"pair_id": "p01", "choice": "both"}, 422),
        "bad order": (good | {"pair_id": "p01", "order": "aa"}, 422),
        "missing field": ({k: v for k, v in good.items() if k != "labeller"} | {"pair_id": "p01"}, 422),
        "extra field": (good | {"pair_id": "p01", "response_a": "rewritten"}, 422),
        "oversized name": (good | {"pair_id": "p01", "labeller": "x" * 65}, 422),
        "oversized body": (good | {"pair_id": "p01", "note": "x" * 5000}, 413),
    }
    for why, (body, status) in refused.items():
        assert _post(server.url, json.dumps(body).encode()) == status, why
    assert _post(server.url, b"{not json") == 422
    rating = {"item_id": "never-asked", "session": "s1", "rater": "ada", "rating": 4}
    assert _post(server.url, json.dumps(rating).encode(), path="api/ratings") == 404
    assert _post(server.url, json.dumps(rating | {"rating": 6}).encode(), path="api/ratings") == 422
    # A body of unstated length (chunked) is refused before it is read.
    chunked = subprocess.run(
        [sys.executable, "-c", _CHUNKED_POST, str(server.port)], capture_output=True, text=True, timeout=30
    )
    assert chunked.stdout.strip() == "411", chunked.stderr
    assert server.labels.read_bytes() == before
    assert not (server.labels.parent / "ratings.jsonl").exists()


_CHUNKED_POST = """
import http.client, sys
connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
connection.request("POST", "/api/labels", body=iter([b'{"pair_id": "p01"}']), encode_chunked=True,
                   headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
print(connection.getresponse().status)
"""


def _other_addresses() -> list[str]:
    """Addresses of this machine other than 127.0.0.1: another loopback one, and the outward interface's."""
    addresses = ["127.0.0.2"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outward interface
            addresses.append(probe.getsockname()[0])
        except OSError:
            pass
    return [address for address in addresses if address != "127.0.0.1"]


def test_the_server_answers_on_127_0_0_1_only(server):
    with urllib.request.urlopen(server.url, timeout=5) as response:
        assert response.status == 200
    for address in _other_addresses():
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.settimeout(5)
            probe.connect((address, server.port))
    with socket.socket(socket.AF_INET6) as probe, pytest.raises(OSError):  # nor on IPv6's loopback
        probe.settimeout(5)
        probe.connect(("::1", server.port))
