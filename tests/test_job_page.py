"""The job page and the model page: JSON stays the default, a browser gets server-rendered HTML.

The browser tests run the app on a real HTTP server (loopback, a free port) over the local stack with
a fake trainer, and drive Debian's headless `chromium` (installed by scripts/setup.sh) through the
Chrome DevTools protocol on a pipe (`--remote-debugging-pipe`: NUL-separated JSON on fds 3 and 4, no
websocket library needed). They check the DOM, that the preview's source plays, that the download
links download, and save full-page screenshots (paths printed; `pytest -rP` shows them).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import math
import os
import select
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import wave
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from consumer.app import create_app
from consumer.handlers import pages
from consumer.local.demo import LocalStack
from consumer.work.tokens import WorkToken
from rvc_core.jobspec import JobProgress, JobSpec
from rvc_core.progress import ProgressEvent
from tests.factories_consumer import FakeTrainer

pytestmark = pytest.mark.timeout(120)

REPORT = {
    "status": "ok",
    "totals": {
        "files": 4,
        "files_used": 2,
        "files_rejected": 2,
        "ignored_entries": 1,
        "input_seconds": 12.5,
        "usable_seconds": 9.75,
        "segments": 6,
        "dropped_chunks": 0,
        "dropped_seconds": 0.0,
        "speakers": [0],
    },
    "warnings": ["2 file(s) could not be used (see files[].reason)"],
    "files": [
        {"name": "a.wav", "status": "used", "reason": None},
        {"name": "b.wav", "status": "used", "reason": None},
        {"name": "broken.wav", "status": "rejected", "reason": "could not decode: invalid RIFF header"},
        {"name": "quiet.flac", "status": "rejected", "reason": "silent: no usable audio"},
    ],
    "ignored": [{"name": "notes.txt", "reason": "not audio"}],
    "dropped": [],
    "segment_seconds": [1.5] * 6,
}


def preview_wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """A short 220 Hz tone, 16-bit PCM: what the player must be able to play."""
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 220 * i / rate)))
        for i in range(int(seconds * rate))
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


class PageTrainer(FakeTrainer):
    """The fake trainer, plus what the page shows: rvc_core's report shape (rejected files with
    reasons), a preview clip, and the per-epoch history that `metrics` carries when training ends."""

    def _prepare(
        self, dataset_zip: Path, workdir: Path, emit: Callable[[ProgressEvent], None]
    ) -> dict[str, Any]:
        super()._prepare(dataset_zip, workdir, emit)
        return REPORT

    def _finish(
        self,
        outdir: Path,
        spec: JobSpec,
        epoch: int,
        report: dict[str, Any],
        emit: Callable[[ProgressEvent], None],
    ) -> JobProgress:
        done = super()._finish(outdir, spec, epoch, report, emit)
        done.artifacts["preview"] = preview_wav(outdir / "preview.wav")
        (outdir / "report.json").write_text(json.dumps({"epochs": epoch}))
        done.artifacts["report"] = outdir / "report.json"
        history = [
            {
                "epoch": e,
                "losses": {"g_total": 40 / e + 5, "d_total": 3 + 1 / e, "g_mel": 45 * (1 + 2 / e)},
                "validation_mel": 1.2 + 2 / e,
            }
            for e in range(1, epoch + 1)
        ]
        done.metrics.update(history=history, best_validation_mel=1.2 + 2 / epoch, steps=epoch * 3)
        return done


# --- the stack and its jobs ---------------------------------------------------------------------------
def dataset_zip(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("a.wav", "b.wav", "broken.wav", "quiet.flac"):
            zf.writestr(name, b"RIFF")
        zf.writestr("notes.txt", b"hello")
    return path


def make_stack(root: Path) -> LocalStack:
    return LocalStack(root, env={"SLICE_SECONDS": "30"}, trainer=PageTrainer(epochs_per_call=2))


def accept(stack: LocalStack, model: str, epochs: int, name: str | None = None) -> str:
    """Uploads a dataset and delivers the notification: the job is accepted, its first task queued."""
    before = {r.data["job_id"] for r in stack.results if r.kind == "accepted"}
    zipped = dataset_zip(stack.root / "upload" / f"{model}.zip")
    stack.upload(zipped, name or f"datasets/{model}.zip", {"model-name": model, "epochs": str(epochs)})
    stack.bus.run_until_idle(timeout=30)
    (job_id,) = {r.data["job_id"] for r in stack.results if r.kind == "accepted"} - before
    return job_id


def run_slice(stack: LocalStack, job_id: str) -> None:
    record = stack.services.records.get(job_id)
    assert record is not None
    answer = stack.client.post(
        "/work", data=WorkToken(job_id, record.seq).encode(), content_type="application/json"
    )
    assert answer.status_code < 300, answer.get_data(as_text=True)


def finish(stack: LocalStack, job_id: str) -> None:
    while not stack.services.records.get(job_id).is_final:  # type: ignore[union-attr]
        run_slice(stack, job_id)
    stack.bus.run_until_idle(timeout=30)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    s = make_stack(tmp_path / "stack")
    yield s
    s.dispatcher.stop(wait=False)


HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


# --- JSON stays the default ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "accept_header", [None, "*/*", "application/json", "application/json, text/html;q=0.5"]
)
def test_api_clients_still_get_json(stack: LocalStack, accept_header: str | None) -> None:
    job_id = accept(stack, "alice", 6)
    headers = {"Accept": accept_header} if accept_header else {}
    answer = stack.client.get(f"/jobs/{job_id}", headers=headers)
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    body = answer.get_json()
    assert body["job_id"] == job_id and body["queue"]["position"] == 1
    assert "Accept" in answer.headers["Vary"]
    missing = stack.client.get("/jobs/0000000000000000", headers=headers)
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"


def test_a_browser_gets_the_page_and_format_overrides(stack: LocalStack) -> None:
    job_id = accept(stack, "alice", 6)
    page = stack.client.get(f"/jobs/{job_id}", headers=HTML)
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert 'id="queue-position">1<' in text and '<meta http-equiv="refresh"' in text
    assert f'action="/jobs/{job_id}:cancel"' in text and 'method="post"' in text
    assert "<script" not in text and "http://" not in text and "https://" not in text  # offline, no JS
    assert stack.client.get(f"/jobs/{job_id}?format=json", headers=HTML).mimetype == "application/json"
    assert stack.client.get(f"/jobs/{job_id}?format=html").mimetype == "text/html"
    missing = stack.client.get("/jobs/nope", headers=HTML)
    assert missing.status_code == 404 and "There is no job nope" in missing.get_data(as_text=True)


def test_failed_job_page_shows_the_error_and_no_cancel(stack: LocalStack) -> None:
    job_id = accept(stack, "alice", 6)
    stack.services.records.update(job_id, lambda r: _fail(r))
    text = stack.client.get(f"/jobs/{job_id}", headers=HTML).get_data(as_text=True)
    assert '<code id="error-code">no_audio</code>' in text
    assert "no audio file in the archive &lt;here&gt;" in text  # escaped
    assert ":cancel" not in text and 'http-equiv="refresh"' not in text


def _fail(r: Any) -> bool:
    r.status = "failed"
    r.error = {"stage": "extract", "code": "no_audio", "message": "no audio file in the archive <here>"}
    return True


def test_running_job_curves_use_the_progress_history_when_the_worker_keeps_one(stack: LocalStack) -> None:
    job_id = accept(stack, "alice", 10)
    run_slice(stack, job_id)

    def with_history(r: Any) -> bool:
        r.progress = {
            **r.progress,
            "history": [
                {"epoch": e, "losses": {"g_mel": 90 / e, "validation_mel": 3 / e}} for e in (1, 2, 3)
            ],
        }
        return True

    stack.services.records.update(job_id, with_history)
    text = stack.client.get(f"/jobs/{job_id}", headers=HTML).get_data(as_text=True)
    assert 'data-series="mel (train)"' in text and 'data-series="mel (validation)"' in text
    record = stack.services.records.get(job_id)
    assert record is not None
    (mel,) = [c for c in pages.loss_charts(record) if c.title == "Mel L1 loss"]
    assert [len(s.points) for s in mel.series] == [3, 3]
    assert mel.series[0].points[0] == (1.0, 2.0)  # g_mel without RVC's x45 weight


def test_a_long_run_stays_a_small_page(stack: LocalStack) -> None:
    """1000 epochs of rvc_core's history, every loss: curves are thinned to 200 points each."""
    job_id = accept(stack, "alice", 1000)
    folder = f"{stack.settings.models_url}/alice/{job_id}"
    keys = ("g_total", "d_total", "g_mel", "g_kl", "g_fm", "g_adv")

    def done(r: Any) -> bool:
        r.status, r.stage = "succeeded", "done"
        r.progress = {"epoch": 1000, "epochs": 1000, "losses": {}}
        r.metrics = {
            "epochs": 1000,
            "best_epoch": 990,
            "best_validation_mel": 0.4,
            "history": [
                {"epoch": e, "losses": {k: 10 / e + i for i, k in enumerate(keys)}, "validation_mel": 1 / e}
                for e in range(1, 1001)
            ],
        }
        names = {
            "pth": "alice.pth",
            "zip": "alice.zip",
            "report_png": "report.png",
            "pth_e500": "alice_e500.pth",
        }
        r.artifacts = {kind: f"{folder}/{name}" for kind, name in names.items()}
        return True

    stack.services.records.update(job_id, done)
    page = stack.client.get(f"/jobs/{job_id}", headers=HTML)
    text = page.get_data(as_text=True)
    print(f"a 1000-epoch job's page: {len(page.data)} bytes")
    assert len(page.data) < 100_000
    assert text.count('class="curve"') == 7  # mel train + validation, then 5 others
    record = stack.services.records.get(job_id)
    assert record is not None
    assert all(len(s.points) == pages.CURVE_POINTS for c in pages.loss_charts(record) for s in c.series)
    assert f'src="/jobs/{job_id}/files/report.png"' in text and "alice_e500.pth" in text
    assert "<audio" not in text  # no preview among the artifacts


def test_files_endpoint_serves_only_the_jobs_own_artifacts(stack: LocalStack) -> None:
    job_id = accept(stack, "alice", 2)
    finish(stack, job_id)
    record = stack.services.records.get(job_id)
    assert record is not None and record.status == "succeeded"
    pth = record.artifacts["pth"].rsplit("/", 1)[1]
    got = stack.client.get(f"/jobs/{job_id}/files/{pth}")
    assert got.status_code == 200 and "attachment" in got.headers["Content-Disposition"]
    wav = stack.client.get(f"/jobs/{job_id}/files/preview.wav")
    assert wav.status_code == 200 and wav.mimetype == "audio/wav" and wav.data[:4] == b"RIFF"
    assert "attachment" not in wav.headers.get("Content-Disposition", "")
    ranged = stack.client.get(f"/jobs/{job_id}/files/preview.wav", headers={"Range": "bytes=0-3"})
    assert ranged.status_code == 206 and ranged.data == b"RIFF"
    (stack.root / "models" / "alice" / job_id / "secret.txt").write_text("not an artifact")
    for name in ("secret.txt", "latest.json", "..", "%2e%2e%2flatest.json", "job.json"):
        assert stack.client.get(f"/jobs/{job_id}/files/{name}").status_code == 404, name

    # An artifact URI outside the job's own folder (a tampered or foreign record) is never served.
    def foreign(r: Any) -> bool:
        r.artifacts["report"] = f"{stack.settings.state_url}/jobs/{job_id}/job.json"
        return True

    stack.services.records.update(job_id, foreign)
    assert stack.client.get(f"/jobs/{job_id}/files/job.json").status_code == 404
    assert stack.client.get("/jobs/0123456789abcdef/files/preview.wav").status_code == 404


def test_model_page_lists_jobs_newest_first_with_latest_marked(stack: LocalStack) -> None:
    first = accept(stack, "alice", 2, "datasets/alice-1.zip")
    finish(stack, first)
    second = accept(stack, "alice", 2, "datasets/alice-2.zip")
    finish(stack, second)
    third = accept(stack, "alice", 6, "datasets/alice-3.zip")  # the newest upload: still queued
    answer = stack.client.get("/models/alice")
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    body = answer.get_json()
    assert [j["job_id"] for j in body["jobs"]] == [third, second, first]
    assert [j["latest"] for j in body["jobs"]] == [False, True, False]
    assert body["latest"]["job_id"] == second
    page = stack.client.get("/models/alice", headers=HTML)
    table = page.get_data(as_text=True).split('<table id="jobs">', 1)[1]
    assert page.status_code == 200 and table.index(third) < table.index(second) < table.index(first)
    assert table.count('class="latest-mark"') == 1
    assert stack.client.get("/models/bob").status_code == 404
    assert stack.client.get("/models/..", headers=HTML).status_code == 404


# --- in a real browser --------------------------------------------------------------------------------
def chromium_binary() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("headless chromium is missing: run scripts/setup.sh (Debian's `chromium` package)")
    return found


class Chromium:
    """Headless Chromium driven over `--remote-debugging-pipe`: one page, one session."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            binary,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-extensions",
            "--mute-audio",
            "--autoplay-policy=no-user-gesture-required",
            "--window-size=1000,900",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")
        # The browser reads commands on fd 3 and writes answers on fd 4. Bash wires them (dash takes
        # one-digit descriptors only), not a
        # preexec_fn: that would make CPython fork() and run gRPC's fork handlers, which can deadlock
        # a test process that has used gRPC (consumer/local/orphans.py).
        read_end, write_end = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        to_browser_r, from_browser_w = read_end, write_end
        wiring = f'exec "$@" 3<&{read_end} 4>&{write_end} {read_end}<&- {write_end}>&-'
        self._log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            ["/bin/bash", "-c", wiring, "chromium", *args],
            pass_fds=(read_end, write_end),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=self.session)

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:  # fmt: skip
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                    raise TimeoutError(f"chromium did not answer {method} in {timeout} s")
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited (rc {self.process.poll()}) during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") != self._next_id:
                continue  # an event, or the answer to an earlier call
            if "error" in answer:
                raise RuntimeError(f"{method}: {answer['error']}")
            return answer["result"]

    def page(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        return self.call(method, params, session=self.session, **kw)

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        result = self.page(
            "Runtime.evaluate",
            {
                "expression": expression,
                "awaitPromise": True,
                "returnByValue": True,
                "timeout": timeout * 1000,
            },
            timeout=timeout + 5,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.page("Page.navigate", {"url": url})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.evaluate(
                    f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
                ):
                    return
            except AssertionError:
                pass  # the old document went away while asking
            time.sleep(0.05)
        raise TimeoutError(f"{url} did not load")

    def screenshot(self, path: Path) -> Path:
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1000, "height": max(600, height), "deviceScaleFactor": 1, "mobile": False},
        )
        data = self.page("Page.captureScreenshot", {"format": "png"})["data"]
        self.page("Emulation.clearDeviceMetricsOverride")
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self._log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    binary = chromium_binary()
    folder = Path(tempfile.mkdtemp(prefix="job-page-chromium-"))
    profile = folder / "profile"
    profile.mkdir()
    chrome = Chromium(binary, profile)
    try:
        yield chrome
    finally:
        chrome.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def served(stack: LocalStack) -> Iterator[str]:
    """The stack's api on a real HTTP server on loopback, for the browser."""
    server = make_server("127.0.0.1", 0, create_app(stack.services, handle_sigterm=False), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("job-page-screenshots")


def shoot(browser: Chromium, folder: Path, name: str, record_property: Callable[[str, object], None]) -> Path:
    path = browser.screenshot(folder / name)
    assert path.stat().st_size > 5000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {path}")
    record_property(f"screenshot_{path.stem}", str(path))
    return path


def test_browser_running_job_page(
    browser: Chromium,
    stack: LocalStack,
    served: str,
    screenshots: Path,
    record_property: Callable[[str, object], None],
) -> None:
    job_id = accept(stack, "alice", 6)
    run_slice(stack, job_id)  # 2 of 6 epochs: running, the next task waits in the queue
    browser.open(f"{served}/jobs/{job_id}")
    dom = browser.evaluate(
        """(() => {
          const p = document.querySelector('progress#progress');
          const form = document.querySelector('form#cancel');
          return {
            status: document.querySelector('#status').dataset.status,
            stage: document.querySelector('#stage').textContent,
            progress: p && [p.value, p.max, p.position],
            refresh: document.querySelector('meta[http-equiv=refresh]')?.content,
            cancel: form && [form.method, new URL(form.action).pathname],
            curves: [...document.querySelectorAll('svg.chart polyline.curve')].map(c => c.dataset.series),
            rejected: [...document.querySelectorAll('#rejected tr td:first-child')].map(td => td.textContent),
            reasons: document.querySelector('#rejected')?.textContent,
            audio: document.querySelectorAll('audio').length,
            scripts: document.scripts.length,
            external: [...document.querySelectorAll('[src],[href]')].map(e => e.src || e.href)
                        .filter(u => !u.startsWith(location.origin) && !u.startsWith('data:')),
          };
        })()"""
    )
    assert dom["status"] == "running" and dom["stage"] == "train"
    assert dom["progress"] == [2, 6, pytest.approx(1 / 3)]
    assert dom["refresh"] == str(pages.REFRESH_SECONDS)
    assert dom["cancel"] == ["post", f"/jobs/{job_id}:cancel"]
    assert dom["curves"] == ["mel (train)"]  # the record keeps the latest losses only, for now
    assert dom["rejected"] == ["broken.wav", "quiet.flac"] and "invalid RIFF header" in dom["reasons"]
    assert dom["audio"] == 0 and dom["scripts"] == 0 and dom["external"] == []
    shoot(browser, screenshots, "running.png", record_property)


def test_browser_finished_job_page_plays_the_preview_and_downloads(
    browser: Chromium,
    stack: LocalStack,
    served: str,
    screenshots: Path,
    record_property: Callable[[str, object], None],
) -> None:
    job_id = accept(stack, "alice", 4)
    finish(stack, job_id)
    record = stack.services.records.get(job_id)
    assert record is not None and record.status == "succeeded"
    browser.open(f"{served}/jobs/{job_id}")
    dom = browser.evaluate(
        """(async () => {
          const audio = document.querySelector('audio#preview');
          if (audio.readyState < 1) {
            await new Promise((ok, fail) => {
              audio.addEventListener('loadedmetadata', ok, {once: true});
              audio.addEventListener('error', () => fail(new Error('audio error ' + audio.error?.code)));
              audio.load();
            });
          }
          const source = await fetch(audio.currentSrc);
          await audio.play();
          const started = audio.currentTime;
          await new Promise(ok => setTimeout(ok, 300));
          const played = audio.currentTime - started;
          audio.pause();
          const links = await Promise.all([...document.querySelectorAll('a.download')].map(async a => {
            const r = await fetch(a.href);
            const bytes = (await r.arrayBuffer()).byteLength;
            return {kind: a.dataset.kind, download: a.getAttribute('download'), status: r.status,
                    disposition: r.headers.get('content-disposition'), bytes};
          }));
          return {
            status: document.querySelector('#status').dataset.status,
            progress: [document.querySelector('progress#progress').value,
                       document.querySelector('progress#progress').max],
            refresh: !!document.querySelector('meta[http-equiv=refresh]'),
            cancel: !!document.querySelector('form#cancel'),
            duration: audio.duration,
            played,
            source: [source.status, source.headers.get('content-type')],
            links,
            curves: [...document.querySelectorAll('svg.chart polyline.curve')]
                      .map(c => [c.dataset.series, c.points.numberOfItems]),
          };
        })()"""
    )
    assert dom["status"] == "succeeded" and dom["progress"] == [4, 4]
    assert not dom["refresh"] and not dom["cancel"]
    assert dom["source"] == [200, "audio/wav"]
    assert dom["duration"] == pytest.approx(1.0, abs=0.01) and dom["played"] > 0
    folder = stack.root / "models" / "alice" / job_id
    expected = {kind: (folder / record.artifacts[kind].rsplit("/", 1)[1]) for kind in ("pth", "index", "zip")}
    assert [link["kind"] for link in dom["links"]] == ["pth", "index", "zip"]
    for link in dom["links"]:
        path = expected[link["kind"]]
        assert link["status"] == 200 and link["download"] == path.name
        assert link["disposition"].startswith("attachment") and path.name in link["disposition"]
        assert link["bytes"] == path.stat().st_size
    assert sorted(dom["curves"]) == sorted(
        [["mel (train)", 4], ["mel (validation)", 4], ["g_total", 4], ["d_total", 4]]
    )
    # A click on the zip link saves the file, as a person's click would.
    downloads = screenshots / f"downloads-{job_id}"
    downloads.mkdir()
    browser.call("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    browser.evaluate("document.querySelector('a.download[data-kind=zip]').click()")
    saved = downloads / expected["zip"].name
    deadline = time.monotonic() + 15
    while not (saved.exists() and saved.stat().st_size == expected["zip"].stat().st_size):
        assert time.monotonic() < deadline, f"the zip was not downloaded: {list(downloads.iterdir())}"
        time.sleep(0.05)
    assert zipfile.ZipFile(saved).namelist() == zipfile.ZipFile(expected["zip"]).namelist()
    page = stack.client.get(f"/jobs/{job_id}", headers=HTML)
    print(f"finished job page: {len(page.data)} bytes")
    record_property("finished_page_bytes", len(page.data))
    shoot(browser, screenshots, "finished.png", record_property)


def test_browser_model_page(
    browser: Chromium,
    stack: LocalStack,
    served: str,
    screenshots: Path,
    record_property: Callable[[str, object], None],
) -> None:
    first = accept(stack, "alice", 2, "datasets/alice-1.zip")
    finish(stack, first)
    second = accept(stack, "alice", 4, "datasets/alice-2.zip")
    run_slice(stack, second)
    browser.open(f"{served}/models/alice")
    rows = browser.evaluate(
        "[...document.querySelectorAll('#jobs tr.job')]"
        ".map(r => [r.dataset.job, r.classList.contains('latest')])"
    )
    assert rows == [[second, False], [first, True]]
    shoot(browser, screenshots, "model.png", record_property)
