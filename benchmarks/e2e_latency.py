"""End-to-end latency: spoken turns through the real app, from the end of speech to the first sample played.

    xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python benchmarks/e2e_latency.py --turns 20 --json \
        [--screenshot window.png]

Starts a private PulseAudio daemon with a virtual microphone and speaker (tests/e2e_env.py), a
random-weight test checkpoint, and `python main.py --model M --data-dir TMP` (hands-free; Qt's
offscreen platform when there is no display). An espeak-ng question is played into the microphone
N times (after one warm-up turn); each reply is played out to the end before the next question.
The app stores its voice-loop telemetry with every reply (`timings.voice_ms`, ms from the end of
speech) beside the engine's own timings (ms from the start of its turn); this script reads them
back from the history and reports the median and p90 of each stage:

- `endpoint`: end of speech → the endpointer's decision (its hangover; the user's wait, not overhead)
- `send`: decision → request written to the engine socket
- `engine_*`: the engine's own compute: `encode` (speech encoder), `prefill`, `first_text`, and
  `first_audio` = encode + prefill + the first decode steps + the first vocoder chunk (model compute)
- `request_to_engine`: app first text − request sent − engine first text: request transfer and
  decoding, the text event's way back, GUI-thread queueing
- `audio_out`: (app first audio played − app first text) − (engine first audio − engine first text):
  audio event transfer, resampling, the jitter buffer's prebuffer, the device's output latency
- `decision_to_first_sample`: endpoint decision → first sample at the output device (what the user waits
  after the endpointer), and `app_overhead` = that − engine first_audio (goal ≤ 60 ms at the median)

`device_underruns` counts the output underruns ALSA reported in the app's log over the whole run
(warm-up included), and `output_buffer_grown` the times the app moved the speaker to a bigger output
buffer after a reply it ran short in (the turns after that one are measured with the bigger buffer).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from tests.e2e.omnivox import Omnivox  # noqa: E402
from tests.e2e_env import pulseaudio, spoken_question  # noqa: E402

OVERHEAD_GOAL_MS = 60.0


def stages(timings: dict) -> dict[str, float]:
    """One turn's stages in ms from the reply's stored timings (engine's own, and the voice loop's)."""
    voice = timings["voice_ms"]
    app_text = voice["first_text"] - voice["request_sent"]
    decision_to_sample = voice["first_audio_played"] - voice["endpoint"]
    return {
        "endpoint": voice["endpoint"] - voice["speech_end"],
        "send": voice["request_sent"] - voice["endpoint"],
        "engine_encode": timings["encode"],
        "engine_prefill": timings["prefill"],
        "engine_first_text": timings["first_text"],
        "engine_first_audio": timings["first_audio"],
        "request_to_engine": app_text - timings["first_text"],
        "audio_out": (voice["first_audio_played"] - voice["first_text"]) - (timings["first_audio"]
                                                                            - timings["first_text"]),
        "decision_to_first_sample": decision_to_sample,
        "app_overhead": decision_to_sample - timings["first_audio"],
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(turns: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {name: {"median": round(statistics.median(t[name] for t in turns), 1),
                   "p90": round(percentile([t[name] for t in turns], 0.9), 1)} for name in turns[0]}


def run(turns: int, max_new_tokens: int, work: Path, screenshot: Path | None = None) -> dict:
    subprocess.run([sys.executable, "main.py", "make-test-model", str(work / "model")], cwd=ROOT, check=True,
                   capture_output=True)
    question, _ = spoken_question(work)
    with ExitStack() as stack:
        env = stack.enter_context(pulseaudio())
        if not os.environ.get("DISPLAY"):
            env = {**env, "QT_QPA_PLATFORM": "offscreen"}
        app = Omnivox(env, work / "model", work / "data", max_new_tokens=max_new_tokens, log=work / "app.log")
        stack.callback(app.close)
        app.wait_listening()
        measured = []
        for number in range(turns + 1):  # the first turn warms up the engine (and waits for its model)
            app.say(question)
            stored = app.wait_reply_played(number + 1, timeout=300)
            reply = [turn for turn in stored if turn["role"] == "assistant"][number]
            if number and reply["timings"]["voice_ms"].get("first_audio_played") is not None:
                measured.append(stages(reply["timings"]))
        if screenshot is not None:  # the window after the last turn, as the user sees it
            app.find_window()
            g = app.geometry
            Image.fromarray(app.screen.grab()[g.y : g.y + g.height, g.x : g.x + g.width]).save(screenshot)
    if not measured:
        raise RuntimeError("no turn reached the speaker")
    summary = summarise(measured)
    log = (work / "app.log").read_text("utf-8", "replace")
    return {
        "turns": len(measured),
        "device_underruns": log.count("underrun occurred"),
        "output_buffer_grown": log.count("the speaker ran short"),
        "max_new_tokens": max_new_tokens,
        "platform": env.get("QT_QPA_PLATFORM", "xcb"),
        "stages_ms": summary,
        "app_overhead_goal_ms": OVERHEAD_GOAL_MS,
        "app_overhead_goal_met": summary["app_overhead"]["median"] <= OVERHEAD_GOAL_MS,
        "per_turn_ms": measured,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=10, help="measured spoken turns (after one warm-up turn)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="reply length in tokens (~0.13 s each)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--screenshot", type=Path, help="save the screen after the last turn (needs a display)")
    args = parser.parse_args()
    if args.screenshot is not None and not os.environ.get("DISPLAY"):
        parser.error("--screenshot needs a display (run under xvfb-run)")
    with tempfile.TemporaryDirectory(prefix="omnivox-e2e-latency-") as folder:
        result = run(args.turns, args.max_new_tokens, Path(folder), args.screenshot)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['turns']} spoken turns through the real app ({result['platform']}), ms:")
    for name, values in result["stages_ms"].items():
        print(f"  {name:<26} median {values['median']:>8.1f}   p90 {values['p90']:>8.1f}")
    print(f"app overhead goal ≤ {OVERHEAD_GOAL_MS:g} ms at the median: "
          f"{'met' if result['app_overhead_goal_met'] else 'not met'}")
    print(f"output underruns ALSA reported: {result['device_underruns']}; "
          f"output buffer grown {result['output_buffer_grown']} times")
    return 0


if __name__ == "__main__":
    sys.exit(main())
