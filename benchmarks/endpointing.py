"""Endpointing: does the endpointer cut people off, keep them waiting, or hear turns in noise?

Speech is generated with espeak-ng: sentences built from spoken phrases joined by pauses of
200–800 ms (the pauses a person leaves mid-sentence), mixed with pink noise at 20, 10 and 5 dB
SNR. Non-speech clips (keyboard typing, a music-like melody, a fan starting up) are mixed with
the same noise. Our endpointer (app/audio/endpointer.py, "normal" preset) runs side by side with
plain webrtcvad (aggressiveness 3) under the py-webrtcvad example's ring-buffer rule (300 ms
padding, 90 % voiced frames to start, 90 % unvoiced to end) on exactly the same audio.

Reported per detector and SNR: false cuts (a turn ended inside a sentence, by the length of the
pause it ended in), missed sentences, false turns (turns on non-speech, and turns outside the
speech in the sentence streams; a turn still open when a clip ends counts, for both detectors),
endpoint delay after the true end of speech (median, p90) and CPU time per second of audio. A
pause and the end of speech are where the voice is, within 20 dB of its active level (see
`espeak`). Also reported: the CPU the echo canceller adds while a reply plays (speakers).

The "low" and "high" sensitivity presets are reported too, to show the trade between cutting
people off and making them wait.

Usage: python benchmarks/endpointing.py [--json] [--sentences 28] [--seed 0]   (needs espeak-ng)
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import shutil
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import webrtcvad

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.audio.echo import make_echo_canceller  # noqa: E402
from app.audio.endpointer import Endpointer, SpeechEnded  # noqa: E402

RATE = 16000
FRAME = 480  # 30 ms, the frame size both detectors run on
SNRS_DB = (20, 10, 5)
PAUSES_MS = (200, 300, 400, 500, 600, 700, 800)
SPEECH_DBFS = -26.0  # active speech level, a normal voice at a desk microphone
GOALS = {"false_cuts_pauses_le_500ms": 0, "false_turns_non_speech_10db": 0, "median_delay_ms": 600, "cpu_percent": 2.0}

PHRASES = [
    "could you tell me", "what is on the screen", "right now", "I was looking at this chart",
    "and I wonder why", "the numbers went down", "last month", "please describe the picture",
    "in a few words", "what colour is the car", "parked outside", "remind me tomorrow morning",
    "to call my sister", "how far is it", "from here to the station", "can you read",
    "the small print", "at the bottom", "I think the second option", "looks better to me",
    "but I am not sure", "tell me a story", "about a brave little fox", "before I go to sleep",
]
VOICES = [("en-us", 165, 50), ("en-gb", 150, 40), ("en-us+f3", 175, 65), ("en-gb-x-rp+m3", 140, 35),
          ("en-us+f2", 160, 70), ("en-029", 155, 45)]


@dataclass
class Stream:
    kind: str  # "speech", "clicks", "tones" or "fan"
    snr_db: int
    pcm: np.ndarray  # int16, 16 kHz
    speech: tuple[float, float] | None = None  # true start and end of speech, seconds
    pauses: tuple[tuple[float, float], ...] = ()  # (start, end) of the pauses inside the sentence


@dataclass
class Turn:
    start: float
    end: float
    emitted: float  # stream time at which the detector declared the end


# --- signals -----------------------------------------------------------------------------------

def espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """One spoken phrase at 16 kHz float32, from the first to the last 5 ms that carry the voice.

    The voice is what lies within 20 dB of the phrase's active speech level (ITU-T P.56 counts
    speech active down to 15.9 dB under it). A fixed "within 40 dB of the loudest 5 ms" kept, for
    the +f2 / +f3 variants, the 60–130 ms ring at 25–30 dB under the voice that espeak-ng leaves
    after every phrase whatever its last sound: that made a "500 ms" pause 560–630 ms of silence
    and put the true end of speech after the voice had stopped.
    """
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as f:
        rate = f.getframerate()
        audio = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    audio = soxr.resample(audio, rate, RATE)
    energy = np.mean(np.square(audio[: len(audio) // 80 * 80]).reshape(-1, 80), axis=1)
    active = np.mean(energy[energy > energy.max() * 1e-4])  # the speech's level, silence left out
    voice = np.flatnonzero(energy > active * 10 ** (-20 / 10))
    return audio[voice[0] * 80 : (voice[-1] + 1) * 80]


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / RATE), 20.0))
    noise = np.fft.irfft(spectrum, n)
    return noise / np.sqrt(np.mean(noise**2))


def level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale to an RMS of dbfs, measured over the active (non-silent) part."""
    active = audio[np.abs(audio) > 1e-4]
    return audio * 10 ** (dbfs / 20) / np.sqrt(np.mean(active**2))


def to_pcm(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16)


def sentence(rng: np.random.Generator, clips: list[np.ndarray], pauses_ms: list[int]):
    """Phrases joined by the given pauses; returns the audio and the pauses' (start, end)."""
    parts, spans, t = [clips[0]], [], len(clips[0])
    for clip, pause in zip(clips[1:], pauses_ms, strict=True):
        gap = pause * RATE // 1000
        spans.append((t / RATE, (t + gap) / RATE))
        parts += [np.zeros(gap, np.float32), clip]
        t += gap + len(clip)
    return np.concatenate(parts), spans


def keyboard(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Typing: each key a press and a release click (filtered noise, a few ms decay), in bursts."""
    out = np.zeros(int(seconds * RATE), np.float32)
    t = 0.3
    while t < seconds - 0.3:
        for click_at, gain in ((t, 1.0), (t + rng.uniform(0.05, 0.11), 0.6)):
            n = int(rng.uniform(0.006, 0.02) * RATE)
            click = rng.standard_normal(n) * np.exp(-np.arange(n) / (rng.uniform(0.0015, 0.004) * RATE))
            click += 0.5 * np.sin(2 * np.pi * rng.uniform(150, 400) * np.arange(n) / RATE) * np.exp(
                -np.arange(n) / (0.004 * RATE))  # the key's body thump
            i = int(click_at * RATE)
            out[i : i + n] += gain * click[: len(out) - i]
        t += rng.uniform(0.07, 0.2) if rng.random() < 0.85 else rng.uniform(0.4, 1.0)  # bursts and pauses
    return out


def melody(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Music-like: notes of a pentatonic scale with harmonics, vibrato and plucked/bowed envelopes, some chords."""
    scale = 220 * 2 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16, 19, 21]) / 12)
    out = np.zeros(int(seconds * RATE), np.float32)
    t = 0.2
    while t < seconds - 0.2:
        duration = rng.choice([0.15, 0.25, 0.4, 0.6, 0.9])
        n = int(duration * RATE)
        k = np.arange(n) / RATE
        plucked = rng.random() < 0.5
        envelope = np.exp(-k * 4) if plucked else np.minimum(1, k / 0.05) * np.minimum(1, (duration - k) / 0.08)
        note = np.zeros(n)
        for f0 in rng.choice(scale, size=rng.integers(1, 4), replace=False):
            phase = 2 * np.pi * f0 * k + 0.02 * np.sin(2 * np.pi * 5.5 * k) * f0 / 5.5
            note += sum(np.sin(h * phase) / h**1.2 for h in range(1, 7))
        i = int(t * RATE)
        out[i : i + n] += (envelope * note)[: len(out) - i]
        t += duration + rng.choice([0.0, 0.0, 0.05, 0.2])
    return out


def fan(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A fan switched on after a second: low rumble, motor hum, blade-pass whirr, slowly wobbling."""
    n = int(seconds * RATE)
    k = np.arange(n) / RATE
    rumble = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.maximum(np.fft.rfftfreq(n, 1 / RATE), 30), n)
    hum = sum(np.sin(2 * np.pi * 100 * h * k) / h for h in (1, 2, 3))
    whirr = np.sin(2 * np.pi * 37 * k) * (1 + 0.3 * np.sin(2 * np.pi * 0.7 * k))
    signal = rumble / rumble.std() + 0.3 * hum + 0.3 * whirr
    return signal * np.clip(k - 1.0, 0, 1)  # off for a second, then spins up


def streams(rng: np.random.Generator, sentences: int) -> list[Stream]:
    voices_clips = [[espeak(p, *VOICES[v % len(VOICES)]) for p in PHRASES] for v in range(len(VOICES))]
    pause_cycle = iter(list(PAUSES_MS) * sentences)
    clean = []
    for i in range(sentences):
        clips = voices_clips[i % len(VOICES)]
        chosen = [clips[j] for j in rng.choice(len(PHRASES), size=int(rng.integers(2, 5)), replace=False)]
        audio, pauses = sentence(rng, chosen, [next(pause_cycle) for _ in chosen[1:]])
        clean.append((level(audio, SPEECH_DBFS), pauses))
    out = []
    for snr in SNRS_DB:
        for audio, pauses in clean:
            lead, trail = rng.uniform(0.8, 1.5), 2.5
            n = int((lead + trail) * RATE) + len(audio)
            mix = pink_noise(rng, n) * 10 ** ((SPEECH_DBFS - snr) / 20)
            mix[int(lead * RATE) : int(lead * RATE) + len(audio)] += audio
            spans = tuple((a + lead, b + lead) for a, b in pauses)
            out.append(Stream("speech", snr, to_pcm(mix), (lead, lead + len(audio) / RATE), spans))
        for kind, make in (("clicks", keyboard), ("tones", melody), ("fan", fan)):
            for _ in range(2):
                clip = level(make(rng, 12.0), SPEECH_DBFS)
                noise = pink_noise(rng, len(clip)) * 10 ** ((SPEECH_DBFS - snr) / 20)
                out.append(Stream(kind, snr, to_pcm(clip + noise)))
    return out


# --- detectors ---------------------------------------------------------------------------------

def frames(pcm: np.ndarray) -> Iterable[bytes]:
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        yield pcm[i : i + FRAME].tobytes()


def ours(pcm: np.ndarray, preset: str = "normal") -> list[Turn]:
    endpointer, turns = Endpointer(preset), []
    for frame in frames(pcm):
        for event in endpointer.push(frame):
            if isinstance(event, SpeechEnded):
                turns.append(Turn(event.start_t, event.end_t, endpointer.now / RATE))
    # A turn still open when the audio ends counts, as the baseline's does: in the app it would go
    # out at the turn cap, so a detector that never lets go of music must not look clean.
    turns += [Turn(e.start_t, e.end_t, e.end_t) for e in endpointer.flush() if isinstance(e, SpeechEnded)]
    return turns


def baseline(pcm: np.ndarray, mode: int = 3, padding_ms: int = 300) -> list[Turn]:
    """py-webrtcvad's example.py vad_collector, reporting times instead of audio."""
    vad, turns = webrtcvad.Vad(mode), []
    ring: collections.deque[tuple[float, bool]] = collections.deque(maxlen=padding_ms * RATE // 1000 // FRAME)
    triggered, start = False, 0.0
    for i, frame in enumerate(frames(pcm)):
        t, speech = i * FRAME / RATE, vad.is_speech(frame, RATE)
        ring.append((t, speech))
        if not triggered and sum(s for _, s in ring) > 0.9 * ring.maxlen:
            triggered, start = True, ring[0][0]
            ring.clear()
        elif triggered and sum(not s for _, s in ring) > 0.9 * ring.maxlen:
            end = t + FRAME / RATE
            turns.append(Turn(start, end, end))
            triggered = False
            ring.clear()
    if triggered:  # the example yields what is left when the audio ends
        turns.append(Turn(start, len(pcm) / RATE, len(pcm) / RATE))
    return turns


# --- scoring -----------------------------------------------------------------------------------

def evaluate(detect: Callable[[np.ndarray], list[Turn]], data: list[Stream]) -> dict:
    cpu = audio_s = 0.0
    per_snr = {snr: {"sentences": 0, "false_cuts": collections.Counter(), "missed": 0, "false_turns": 0,
                     "delays": []} for snr in SNRS_DB}
    non_speech = {snr: collections.Counter() for snr in SNRS_DB}
    for stream in data:
        started = time.process_time()
        turns = detect(stream.pcm)
        cpu += time.process_time() - started
        audio_s += len(stream.pcm) / RATE
        if stream.speech is None:
            non_speech[stream.snr_db][stream.kind] += len(turns)
            continue
        score = per_snr[stream.snr_db]
        score["sentences"] += 1
        begin, end = stream.speech
        inside = [t for t in turns if t.start < end + 0.1 and t.emitted > begin]
        score["false_turns"] += len(turns) - len(inside)
        if not inside:
            score["missed"] += 1
            continue
        for turn in inside:
            if turn.emitted < end:  # the detector declared the turn over while the sentence went on
                pause = [b - a for a, b in stream.pauses if a <= turn.emitted + 0.05]
                score["false_cuts"][round(pause[-1] * 1000) if pause else 0] += 1
            else:
                score["delays"].append(turn.emitted - end)
    result = {}
    for snr, score in per_snr.items():
        delays = np.array(score["delays"]) * 1000
        cuts = score["false_cuts"]
        result[f"{snr}dB"] = {
            "sentences": score["sentences"],
            "false_cuts": sum(cuts.values()),
            "false_cuts_pauses_le_500ms": sum(n for p, n in cuts.items() if p <= 500),
            "false_cuts_by_pause_ms": dict(sorted(cuts.items())),
            "missed": score["missed"],
            "false_turns_around_speech": score["false_turns"],
            "false_turns_non_speech": dict(non_speech[snr]),
            "median_delay_ms": round(float(np.median(delays)), 1) if len(delays) else None,
            "p90_delay_ms": round(float(np.percentile(delays, 90)), 1) if len(delays) else None,
        }
    result["cpu_percent"] = round(100 * cpu / audio_s, 3)
    result["audio_seconds"] = round(audio_s, 1)
    return result


def echo_canceller_cpu(data: list[Stream], seconds: float = 60.0) -> float | None:
    """CPU % of one core that the echo canceller adds with speakers: a reply playing while the mic listens.

    Each stream is played (48 kHz, 20 ms blocks, as a speaker asks for them) and heard back as it
    is; None without the binding.
    """
    canceller = make_echo_canceller()
    if canceller is None:
        return None
    cpu = audio_s = 0.0
    for stream in data:
        played = soxr.resample(stream.pcm.astype(np.float32) / 32768, RATE, 48000).astype(np.float32)
        started = time.process_time()
        for i, frame in enumerate(frames(stream.pcm)):
            canceller.played(played[i * 1440 : i * 1440 + 960], 48000)
            canceller.played(played[i * 1440 + 960 : (i + 1) * 1440], 48000)
            canceller.clean(frame)
        cpu += time.process_time() - started
        audio_s += len(stream.pcm) / RATE
        if audio_s >= seconds:
            break
    return round(100 * cpu / audio_s, 3)


def goals_met(result: dict) -> dict:
    delays = [result[f"{snr}dB"]["median_delay_ms"] for snr in SNRS_DB]
    return {
        "false_cuts_pauses_le_500ms": sum(result[f"{s}dB"]["false_cuts_pauses_le_500ms"] for s in SNRS_DB) == 0,
        "false_turns_non_speech_10db": sum(result["10dB"]["false_turns_non_speech"].values()) == 0,
        "median_delay_ms": all(d is not None and d <= GOALS["median_delay_ms"] for d in delays),
        "cpu_percent": result["cpu_percent"] <= GOALS["cpu_percent"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sentences", type=int, default=28, help="sentences per SNR")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is needed (Debian: apt-get install espeak-ng)")
    data = streams(np.random.default_rng(args.seed), args.sentences)
    report = {"goals": GOALS, "snr_db": SNRS_DB, "pauses_ms": PAUSES_MS, "frame_ms": FRAME * 1000 // RATE}
    detectors = {
        "ours": ours,  # the "normal" preset, the default
        "ours_low": lambda pcm: ours(pcm, "low"),
        "ours_high": lambda pcm: ours(pcm, "high"),
        "baseline_webrtcvad_ring_buffer": baseline,
    }
    for name, detect in detectors.items():
        report[name] = evaluate(detect, data)
        report[name]["goals_met"] = goals_met(report[name])
    report["echo_canceller_cpu_percent"] = echo_canceller_cpu(data)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"echo canceller (speakers, while a reply plays): cpu {report['echo_canceller_cpu_percent']} % of one core")
    for name in detectors:
        r = report[name]
        print(f"{name}: cpu {r['cpu_percent']} % of one core, goals met: {r['goals_met']}")
        for snr in SNRS_DB:
            s = r[f"{snr}dB"]
            print(f"  {snr:>2} dB: cuts {s['false_cuts']} (≤500 ms pauses: {s['false_cuts_pauses_le_500ms']}, "
                  f"by pause {s['false_cuts_by_pause_ms']}), missed {s['missed']}/{s['sentences']}, "
                  f"false turns {s['false_turns_around_speech']} + non-speech {s['false_turns_non_speech']}, "
                  f"delay median {s['median_delay_ms']} p90 {s['p90_delay_ms']} ms")


if __name__ == "__main__":
    main()
