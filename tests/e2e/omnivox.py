"""Driving the real Omnivox from outside, as a person would: a process, a window, a microphone, a speaker.

`Omnivox` is `python main.py --model M --data-dir D` running under a real X server and a private
PulseAudio daemon (tests/e2e_env.py). Everything here acts through public surfaces only:

- the microphone: `paplay` into the virtual source the app records from;
- the speaker: `parecord` from the monitor of the virtual sink it plays to (`Speaker`);
- the window: `xwd` screenshots read with tesseract (`Screen.words`), `xdotool` clicks and keys,
  `xclip` to put an image on the clipboard, another application's window to drag a file from;
- the history: `python main.py history --json`, and while waiting, the SQLite file read-only;
- the engine: its process id, found among the app's children, for `kill`.

Used by tests/e2e and benchmarks/e2e_latency.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SHOWN_MARKER = "OMNIVOX_WINDOW_SHOWN"  # app.gui.SHOWN_MARKER, without importing Qt here
RATE = 16000  # what the speaker is recorded at
SILENCE = 2  # int16 steps: the null sink's monitor is digital zero when nothing plays
T = TypeVar("T")


class Timeout(AssertionError):
    pass


def wait_until(condition: Callable[[], T], timeout: float, what: str, poll: float = 0.1) -> T:
    """Poll until condition() is truthy and return it; fail saying `what` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


# ---- the speaker ----------------------------------------------------------------------------------


class Speaker:
    """What the app plays, recorded from the virtual speaker's monitor (16 kHz mono int16) on a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["parecord", "--raw", "--device=spk.monitor", f"--rate={RATE}", "--channels=1", "--format=s16le",
             "--latency-msec=10"], env=env, stdout=subprocess.PIPE)
        self.data = bytearray()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.pump, daemon=True)
        self.thread.start()
        wait_until(lambda: len(self.data) > 0, 10, "parecord to deliver audio", poll=0.02)

    def pump(self) -> None:
        assert self.process.stdout is not None
        while chunk := self.process.stdout.read1(4096):
            with self.lock:
                self.data += chunk

    @property
    def samples(self) -> np.ndarray:
        with self.lock:
            return np.frombuffer(bytes(self.data[: len(self.data) // 2 * 2]), np.int16)

    @property
    def seconds(self) -> float:
        return len(self.data) / 2 / RATE

    def heard_since(self, seconds: float) -> bool:
        """Whether anything was played after `seconds` into the recording."""
        return bool(np.abs(self.samples[int(seconds * RATE):].astype(np.int32)).max(initial=0) > SILENCE)

    def wait_for_sound(self, since: float, timeout: float = 60) -> float:
        """Seconds into the recording where sound starts after `since`."""
        wait_until(lambda: self.heard_since(since), timeout, "the app to play something on the speaker", poll=0.02)
        return since + first_sound(self.samples[int(since * RATE):]) / RATE

    def wait_for_sounding(self, since: float, seconds: float, timeout: float = 60) -> float:
        """Seconds into the recording when `seconds` of sound have been played after `since`."""
        wait_until(lambda: sounding_seconds(self.samples[int(since * RATE):]) >= seconds, timeout,
                   f"the app to play {seconds:g} s of sound", poll=0.02)
        return self.seconds

    def record_on(self, seconds: float) -> None:
        """Wait until the recording reaches `seconds` (parecord delivers with some latency)."""
        wait_until(lambda: self.seconds >= seconds, 10, f"{seconds:.1f} s of recording", poll=0.02)

    def stop(self) -> np.ndarray:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.thread.join(timeout=5)
        return self.samples


def first_sound(samples: np.ndarray) -> int:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > SILENCE)
    return int(loud[0]) if len(loud) else len(samples)


def sound_segments(samples: np.ndarray, gap: float = 0.25, block: float = 0.01) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches with sound, joined across gaps shorter than `gap`."""
    n = int(block * RATE)
    blocks = np.abs(samples[: len(samples) // n * n].astype(np.int32)).reshape(-1, n).max(axis=1) > SILENCE
    segments: list[tuple[float, float]] = []
    for index in np.flatnonzero(blocks):
        start, end = index * block, (index + 1) * block
        if segments and start - segments[-1][1] < gap:
            segments[-1] = (segments[-1][0], end)
        else:
            segments.append((start, end))
    return segments


def sounding_seconds(samples: np.ndarray, block: float = 0.01) -> float:
    """How long something is heard: 10 ms blocks with sound in them, gaps not counted."""
    n = int(block * RATE)
    blocks = np.abs(samples[: len(samples) // n * n].astype(np.int32)).reshape(-1, n).max(axis=1) > SILENCE
    return float(blocks.sum() * block)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as f:
        return np.frombuffer(f.readframes(f.getnframes()), np.int16), f.getframerate()


def without_gaps(samples: np.ndarray, shortest: int = 32) -> np.ndarray:
    """The samples with every silent run of `shortest` samples or more cut out (a jitter buffer's pauses)."""
    quiet = np.abs(samples.astype(np.int32)) <= SILENCE
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    keep = np.ones(len(samples), bool)
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        if end - start >= shortest:
            keep[start:end] = False
    return samples[keep]


def band_limited(samples: np.ndarray, band_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(samples.astype(np.float64))
    spectrum[np.fft.rfftfreq(len(samples), 1 / RATE) > band_hz] = 0
    return np.fft.irfft(spectrum, len(samples))


def similarity(recorded: np.ndarray, reference: np.ndarray, band_hz: float = 3000, window_s: float = 0.25,
               search_s: float = 0.1) -> float:
    """How much `recorded` is `reference` played back: ~1 when it is, ~0 for other sound.

    The recording loses its pauses first (a late engine makes the jitter buffer wait), then each
    quarter second of the reference is matched against the recording near where it should be, below
    band_hz (PulseAudio's resamplers blur the top of the band); the median of those correlations (a
    pause's fades and a few samples' shift spoil the one window they fall in, not the verdict).
    """
    a = band_limited(without_gaps(recorded), band_hz)
    b = band_limited(reference, band_hz)
    if len(a) == 0 or len(b) == 0:
        return 0.0
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    correlation = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    lag = int(np.abs(correlation).argmax())
    lag = lag - n if lag > n // 2 else lag  # where the reference starts in the recording
    window, search = int(window_s * RATE), int(search_s * RATE)
    scores = []
    for start in range(0, max(1, len(b) - window + 1), window):
        piece = b[start : start + window]
        low = max(0, start + lag - search)
        near = a[low : start + lag + len(piece) + search]
        if len(near) < len(piece):
            scores.append(0.0)
            continue
        products = np.correlate(near, piece, "valid")
        energies = np.convolve(near**2, np.ones(len(piece)), "valid")
        scores.append(float((np.abs(products) / (np.sqrt(energies) * np.linalg.norm(piece) + 1e-9)).max()))
    return float(np.median(scores))


# ---- the screen -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    text: str
    x: int  # centre, in screen pixels
    y: int
    box: tuple[int, int, int, int]  # left, top, width, height


class Screen:
    """The X display: screenshots, text on it, clicks and keys."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *command: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, check=True, timeout=30, **kwargs)

    def grab(self) -> np.ndarray:
        """The whole screen as an RGB array (xwd, read here: no ImageMagick needed)."""
        return parse_xwd(self.run("xwd", "-root", "-silent").stdout)

    def words(self, region: tuple[int, int, int, int] | None = None, image: np.ndarray | None = None) -> list[Word]:
        """The words tesseract reads in region (left, top, width, height) of the screen."""
        image = self.grab() if image is None else image
        left, top, width, height = region or (0, 0, image.shape[1], image.shape[0])
        crop = Image.fromarray(image[top : top + height, left : left + width]).convert("L")
        scale = 3  # UI text is ~10 px high; tesseract wants ~30
        crop = crop.resize((crop.width * scale, crop.height * scale), Image.Resampling.LANCZOS)
        if np.asarray(crop).mean() < 128:  # light text on a dark theme
            crop = Image.fromarray(255 - np.asarray(crop))
        # The reader must not starve the app it watches: one thread (OpenMP's spinning workers
        # would take both cores) at the lowest priority.
        tsv = subprocess.run(["nice", "-n", "19", "tesseract", "stdin", "stdout", "--psm", "11", "tsv"],
                             input=png_bytes(crop), env={**os.environ, "OMP_THREAD_LIMIT": "1"},
                             capture_output=True, check=True, timeout=60).stdout.decode("utf-8", "replace")
        words = []
        for line in tsv.splitlines()[1:]:
            cells = line.split("\t")
            if len(cells) == 12 and cells[11].strip():
                x, y, w, h = (int(cells[i]) // scale for i in (6, 7, 8, 9))
                words.append(Word(cells[11].strip(), left + x + w // 2, top + y + h // 2, (left + x, top + y, w, h)))
        return words

    def lines(self, region: tuple[int, int, int, int] | None = None) -> list[str]:
        """The lines of text in region, top to bottom (words whose middles are less than a text line apart)."""
        rows: list[list[Word]] = []
        for word in sorted(self.words(region), key=lambda w: w.y):
            if rows and word.y - rows[-1][-1].y <= 12:
                rows[-1].append(word)
            else:
                rows.append([word])
        return [" ".join(w.text for w in sorted(row, key=lambda w: w.x)) for row in rows]

    def text(self, region: tuple[int, int, int, int] | None = None) -> str:
        return " ".join(word.text for word in self.words(region))

    def click(self, x: int, y: int) -> None:
        self.run("xdotool", "mousemove", "--sync", str(x), str(y), "click", "1")

    def key(self, window: int, *keys: str) -> None:
        self.run("xdotool", "windowfocus", "--sync", str(window))
        self.run("xdotool", "key", "--clearmodifiers", *keys)

    def drag_file(self, path: Path, source: tuple[int, int], target: tuple[int, int]) -> bool:
        """Drag a file from another application's window at `source` and drop it at `target` (screen pixels).

        The drag is real XDND between two X clients (tests/e2e/drag_source.py starts it, Qt carries
        it), moved by the pointer as a hand would. Returns whether the target accepted the drop.
        """
        dragger = subprocess.Popen([sys.executable, str(ROOT / "tests" / "e2e" / "drag_source.py"), str(path),
                                    str(source[0]), str(source[1])],
                                   env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert dragger.stdout is not None
            assert dragger.stdout.readline().strip() == "READY", "the drag source did not show its window"
            grab_x, grab_y = source[0] + 60, source[1] + 40  # the middle of drag_source.py's 120 × 80 window
            self.run("xdotool", "mousemove", "--sync", str(grab_x), str(grab_y), "mousedown", "1")
            time.sleep(0.3)  # the drag starts on the press
            for step in range(1, 11):  # XDND follows the pointer: move the way a hand does, not in one jump
                x = grab_x + (target[0] - grab_x) * step // 10
                y = grab_y + (target[1] - grab_y) * step // 10
                self.run("xdotool", "mousemove", "--sync", str(x), str(y))
                time.sleep(0.05)
            time.sleep(0.3)  # the target has answered the last position
            self.run("xdotool", "mouseup", "1")
            return dragger.communicate(timeout=20)[0].strip() == "DROPPED"
        finally:
            if dragger.poll() is None:
                dragger.kill()
                dragger.wait(timeout=10)

    @contextlib.contextmanager
    def clipboard_image(self, path: Path) -> Iterator[None]:
        """An image on the clipboard (xclip serves it until the block ends)."""
        owner = subprocess.Popen(["xclip", "-quiet", "-selection", "clipboard", "-t", "image/png", "-i", str(path)],
                                 env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: b"image/png" in subprocess.run(
                ["xclip", "-o", "-selection", "clipboard", "-t", "TARGETS"], env=self.env, capture_output=True,
                timeout=10).stdout, 10, "the clipboard to offer the image")
            yield
        finally:
            owner.terminate()
            owner.wait(timeout=10)


def parse_xwd(data: bytes) -> np.ndarray:
    """An X window dump (ZPixmap, 24/32 bits per pixel, as Xvfb's TrueColor visual gives) as RGB."""
    header = struct.unpack(">25I", data[:100])
    header_size, pixmap_format, width, height, byte_order = header[0], header[2], header[4], header[5], header[7]
    bits_per_pixel, bytes_per_line, colormap_entries = header[11], header[12], header[19]
    if pixmap_format != 2 or bits_per_pixel not in (24, 32):
        raise ValueError(f"unexpected xwd format {pixmap_format} with {bits_per_pixel} bits per pixel")
    size = bits_per_pixel // 8
    offset = header_size + colormap_entries * 12
    rows = np.frombuffer(data, np.uint8, count=bytes_per_line * height, offset=offset).reshape(height, bytes_per_line)
    pixels = rows[:, : width * size].reshape(height, width, size)
    rgb = pixels[..., [2, 1, 0]] if byte_order == 0 else pixels[..., [size - 3, size - 2, size - 1]]
    return np.ascontiguousarray(rgb)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ---- the app --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    x: int
    y: int
    width: int
    height: int

    def region(self, left: int, top: int, width: int, height: int) -> tuple[int, int, int, int]:
        """A region given relative to the window (negative: from its right / bottom edge)."""
        x = self.x + (left if left >= 0 else self.width + left)
        y = self.y + (top if top >= 0 else self.height + top)
        return x, y, min(width, self.x + self.width - x), min(height, self.y + self.height - y)


class Omnivox:
    """One run of `python main.py` with hands-free listening, its window and its engine process."""

    def __init__(self, env: dict[str, str], model: Path, data_dir: Path, *, max_new_tokens: int = 24,
                 log: Path | None = None) -> None:
        self.env = env
        self.model = model
        self.data_dir = data_dir
        self.screen = Screen(env)
        self.log_path = log or data_dir.with_name(data_dir.name + ".log")
        self.log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "main.py", "--model", str(model), "--data-dir", str(data_dir),
             "--max-new-tokens", str(max_new_tokens), "--print-shown"],
            cwd=ROOT, env={**env, "OMNIVOX_DEBUG": "1"}, stdout=subprocess.PIPE, stderr=self.log)
        self.window = 0
        self.geometry = Geometry(0, 0, 0, 0)

    @property
    def pid(self) -> int:
        return self.process.pid

    # ---- starting and stopping ------------------------------------------------------------------

    def wait_ready(self, timeout: float = 90) -> None:
        """The window is on screen, the microphone is open and the engine has loaded the model."""
        self.wait_listening(timeout)
        self.find_window()
        self.wait_engine_loaded(timeout)

    def find_window(self) -> None:
        """Where the app's window is on the X display (xdotool)."""
        found = self.screen.run("xdotool", "search", "--sync", "--onlyvisible", "--pid", str(self.pid),
                                "--name", "Omnivox").stdout.split()
        self.window = int(found[0])
        shell = self.screen.run("xdotool", "getwindowgeometry", "--shell", str(self.window)).stdout.decode()
        values = dict(line.split("=", 1) for line in shell.split())
        self.geometry = Geometry(int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"]))

    def wait_listening(self, timeout: float = 90) -> None:
        """The window has been shown and the microphone is open (without looking at the screen)."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode("utf-8", "replace")
        assert line.startswith(SHOWN_MARKER), f"the app did not show its window: {line!r}\n{self.log_tail()}"
        wait_until(self.recording, timeout, "the app to open the microphone")

    def wait_engine_loaded(self, timeout: float = 90) -> str:
        """The status bar names the loaded model ("Engine: Lyra_Test (fp32 on cpu)"); returns its text."""
        def loaded() -> str | None:
            self.alive()
            text = self.status_text()
            return text if re.search(r"\(\w+ on (cpu|cuda)", text) else None

        return wait_until(loaded, timeout, "the status bar to report the model loaded", poll=0.3)

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the app exited with status {self.process.returncode}\n{self.log_tail()}")
        return True

    def recording(self) -> bool:
        """Whether PulseAudio lists a recording stream of this process (the app's microphone is open)."""
        listing = subprocess.run(["pactl", "list", "source-outputs"], env=self.env, capture_output=True,
                                 text=True, timeout=10).stdout
        return f'application.process.id = "{self.pid}"' in listing

    def close(self, timeout: float = 30) -> int:
        """SIGTERM, as a logout would: the app closes its window, stops the engine and exits."""
        if self.process.poll() is not None:
            return self.process.returncode
        engine = self.engine_pid(required=False)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(f"the app did not exit within {timeout} s of SIGTERM\n{self.log_tail()}") from None
        finally:
            self.log.close()
        if engine is not None and running(engine):  # an orphaned engine would hold the model in memory for nothing
            os.kill(engine, signal.SIGKILL)
            raise AssertionError("the engine process outlived the app")
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.closed:
            self.log.flush()
        text = self.log_path.read_text("utf-8", "replace").splitlines()
        return "app stderr (last lines):\n" + "\n".join(text[-lines:])

    # ---- the engine process ---------------------------------------------------------------------

    def engine_pid(self, required: bool = True) -> int | None:
        """The engine: the child process running `-m engine.server`."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            state = stat.rsplit(")", 1)[1].split()[0]
            if parent == self.pid and b"engine.server" in cmdline and state != "Z":
                return int(entry.name)
        if required:
            raise AssertionError("the app has no engine process")
        return None

    # ---- the window -----------------------------------------------------------------------------

    def status_text(self) -> str:
        """What the status bar says (notices on the left, the engine's state on the right)."""
        return self.screen.text(self.geometry.region(0, -26, self.geometry.width, 26))

    def click_text(self, text: str, region: tuple[int, int, int, int] | None = None) -> Word:
        """Click the middle of the first word reading `text` (a button's label)."""
        words = self.screen.words(region or (self.geometry.x, self.geometry.y, self.geometry.width,
                                             self.geometry.height))
        word = next((w for w in words if w.text == text), None)
        assert word is not None, f"no {text!r} on screen; read: {' '.join(w.text for w in words)}"
        self.screen.click(word.x, word.y)
        return word

    def key(self, *keys: str) -> None:
        self.screen.key(self.window, *keys)

    # ---- the microphone -------------------------------------------------------------------------

    def say(self, wav: Path) -> None:
        """Speak into the microphone; returns once the last sample has been played into it."""
        subprocess.run(["paplay", "--device=micsrc", str(wav)], env=self.env, check=True, timeout=60)

    # ---- the history ----------------------------------------------------------------------------

    def history(self) -> dict:
        """`python main.py history --json`: what a user would list."""
        listing = subprocess.run([sys.executable, "main.py", "history", "--data-dir", str(self.data_dir), "--json"],
                                 cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(listing.stdout)

    def stored_turns(self) -> list[dict]:
        """The stored turns, oldest first, read-only straight from the database (cheap enough to poll)."""
        path = self.data_dir / "history.sqlite3"
        if not path.exists():
            return []
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = connection.execute("SELECT id, conversation, role, audio_seconds, interrupted, timings "
                                      "FROM turns ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # created, schema not written yet
            return []
        finally:
            connection.close()
        return [{"id": id_, "conversation": conversation, "role": role, "audio_seconds": seconds,
                 "interrupted": bool(interrupted), "timings": json.loads(timings) if timings else None}
                for id_, conversation, role, seconds, interrupted, timings in rows]

    def wait_turns(self, condition: Callable[[list[dict]], bool], what: str, timeout: float = 90) -> list[dict]:
        def check() -> list[dict] | None:
            self.alive()
            turns = self.stored_turns()
            return turns if condition(turns) else None

        return wait_until(check, timeout, what, poll=0.1)

    def wait_reply_played(self, replies: int, timeout: float = 90) -> list[dict]:
        """Until `replies` replies are stored and the last has been played out (its voice timings stored)."""
        def done(turns: list[dict]) -> bool:
            assistant = [t for t in turns if t["role"] == "assistant"]
            return len(assistant) >= replies and "voice_ms" in (assistant[replies - 1]["timings"] or {})

        return self.wait_turns(done, f"reply {replies} to be stored and played", timeout)
