"""`python main.py`: the window by default, without torch; sub-commands without Qt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from app.gui import SHOWN_MARKER

ROOT = Path(__file__).resolve().parents[2]


def test_the_window_and_its_start_path_leave_torch_unimported(tmp_path: Path) -> None:
    """`python main.py` runs the window: it shows, quits on SIGTERM, and never loaded torch or transformers."""
    probe = ("import atexit, sys, main\n"
             "heavy = lambda: sorted({'torch', 'transformers'} & set(sys.modules))\n"
             "atexit.register(lambda: print('HEAVY', heavy(), flush=True))\n"
             f"sys.exit(main.main(['--data-dir', {str(tmp_path)!r}, '--print-shown']))\n")
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    process = subprocess.Popen([sys.executable, "-c", probe], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert line.startswith(SHOWN_MARKER), line
        process.send_signal(signal.SIGTERM)  # closes the window normally, which stops the engine process
        rest, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "HEAVY []" in rest
    code = "import sys, app.window, app.gui; print(sorted({'torch', 'transformers', 'cv2'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # OpenCV too: it loads on the camera thread, after the window is up


def test_a_sub_command_is_parsed_without_loading_qt() -> None:
    code = "import sys, main; main.parse(['ask', '--model', 'm', '--text', 'hi']); print('PySide6' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
