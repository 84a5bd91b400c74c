"""Real audio made offline from Debian packages: an unlabelled tuning corpus and labelled few-shot sets.

    python benchmarks/offline_audio.py --out DIR [--size default|quick] [--seed 0] [--workers 2]

Writes, in the `folder` layout (`read_dataset('folder', DIR/<set>)`), 16 kHz mono 16-bit WAV clips of 1-3 s:

  DIR/words/<word>/<clip>.wav          spoken words as classes (SpeechCommands-like); clips differ by voice (espeak-ng
                                       accent + variant, or a flite voice), speed and pitch
  DIR/speakers/<voice>/<clip>.wav      voice identity as class (VoxCeleb-like); clips are different sentences
  DIR/instruments/<program>/<clip>.wav General MIDI program as class (NSynth-like); clips differ by soundfont
                                       (FluidR3 GM, TimGM6mb), pitch, velocity and note length
  DIR/percussion/<drum>/<clip>.wav     GM drum sound as class (ESC-like events); clips differ by soundfont, drum kit,
                                       velocity, number of hits and tempo
  DIR/unlabelled/<source>/<clip>.wav   the tuning corpus, read recursively with no labels: phrases of other words by
                                       other voices, melodies of other GM programs, other drums, and every recorded
                                       sound the sound-theme and game packages ship (long music cut into 3 s pieces)

Every eval class has `clips_per_class` (>= 20) clips, each from a distinct parameter draw (no file is a noisy copy
of another). Some draws sound the same (several GM kits share a drum's sample), so words and the MIDI sets render
spares and `select_distinct` keeps the first distinct clips by a hash of the full-scale PCM; identical sounds in two
classes stop the build. The eval sets' classes are
disjoint from the tuning corpus's: no eval word occurs in its phrases, no eval voice speaks in it, no eval GM program
(or its immediate neighbours) or eval drum plays in it. Everything is seeded (same seed, same files) and rendered in a
process pool; MIDI is written with `mido` and rendered by fluidsynth many clips per call (fixed 4 s slots, cut).
`DIR/offline_audio.json` lists what was built; a second run with the same size and seed reuses it.

Needs the Debian packages in `REQUIRED_PACKAGES` (stops with the apt-get command when one is missing) and downloads
nothing; Python needs `mido` (MIDI files) and `soxr` besides soundfile and numpy. Timing on 2 CPU cores: `default`
(4 x 288 eval clips, ~1,600 tuning clips, 45 min of audio) 50 s; `quick` (4 x 200, ~700) 25 s.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import fnmatch
import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

SAMPLE_RATE = 16000
VERSION = 4  # bump when the rendering changes, so an old DIR is rebuilt

SOUNDFONTS = {"fluidr3": "/usr/share/sounds/sf2/FluidR3_GM.sf2", "timgm6mb": "/usr/share/sounds/sf2/TimGM6mb.sf2"}
RECORDINGS = ("/usr/share/sounds/freedesktop/stereo/*.oga", "/usr/share/sounds/deepin/stereo/*.wav",
              "/usr/share/sounds/alsa/*.wav", "/usr/share/games/lbreakout2/sounds/*.wav",
              "/usr/share/games/frozen-bubble/snd/*.ogg", "/usr/share/games/pingus/data/sounds/*.wav")
# recordings of a voice saying an eval word ("front left", "let's go", "oh no", "won't give up") stay out
SPOKEN_RECORDINGS = ("audio-channel-*", "Front_*", "Rear_*", "Side_*", "letsgo.wav", "ohno.wav", "wontgiveup.wav")
# Debian package → what of it is used (a program on PATH, or a file / folder).
PACKAGES: dict[str, str] = {
    "espeak-ng": "espeak-ng", "flite": "flite", "fluidsynth": "fluidsynth",
    "fluid-soundfont-gm": SOUNDFONTS["fluidr3"], "timgm6mb-soundfont": SOUNDFONTS["timgm6mb"],
    "sound-theme-freedesktop": "/usr/share/sounds/freedesktop/stereo",
    "deepin-sound-theme": "/usr/share/sounds/deepin/stereo", "alsa-utils": "/usr/share/sounds/alsa",
    "lbreakout2-data": "/usr/share/games/lbreakout2/sounds", "frozen-bubble-data": "/usr/share/games/frozen-bubble/snd",
    "pingus-data": "/usr/share/games/pingus/data/sounds",
}
REQUIRED_PACKAGES = tuple(PACKAGES)

EVAL_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "one", "three", "seven", "nine")
TUNING_WORDS = tuple("""apple river mountain window garden yellow purple happy quickly table chair morning evening
summer winter letter number silver golden market station bridge forest ocean island valley village city street
engine paper pencil music basket candle doctor teacher father mother sister brother friend people animal horse
rabbit tiger monkey orange lemon tomato potato butter bread cheese coffee water kitchen bottle button camera
picture story answer question simple gentle velvet always never maybe often slowly softly loudly bright dark warm
cold heavy light little great early late quiet busy empty full round square silent careful wonderful remember
travel borrow listen follow open close carry wonder whisper gather measure build paint write read sing dance
swim climb jump walk""".split())
ESPEAK_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                  "en-us-nyc")
# espeak-ng 1.51's variants (caleb is left out: it sounds exactly like klatt); the accent 'en-gb' is left out too:
# it ignores every variant (all sound the same), while 'en' (gmw/en, British English) honours them
ESPEAK_VARIANTS = tuple("""m1 m2 m3 m4 m5 m6 m7 m8 f1 f2 f3 f4 f5 klatt klatt2 klatt3 klatt4 croak whisper Alex
Alicia Andrea Andy Annie Denis Diogo Gene Henrique Hugo Jacky Lee Marco Mario Michael Mike Nguyen Storm Tweaky adam
anika announcer antonio aunty belinda benjamin boris david ed edward grandma grandpa gustave iven john linda
marcelo max michel miguel norbert pablo paul pedro quincy rob robert sandro shelby steph travis victor zac""".split())
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
SPEAKER_FLITE = ("awb", "rms", "slt")  # flite voices that are speakers-set classes (kal, kal16 speak in tuning)

GM_PROGRAMS = {0: "piano", 11: "vibraphone", 19: "church_organ", 24: "nylon_guitar", 33: "finger_bass", 40: "violin",
               56: "trumpet", 65: "alto_sax", 73: "flute", 80: "square_lead", 105: "banjo", 114: "steel_drums",
               46: "harp", 71: "clarinet"}
BASS_PROGRAMS = range(32, 40)
GM_DRUMS = {36: "bass_drum", 38: "snare", 42: "closed_hihat", 46: "open_hihat", 49: "crash_cymbal",
            51: "ride_cymbal", 39: "hand_clap", 56: "cowbell", 54: "tambourine", 37: "side_stick", 75: "claves",
            70: "maracas"}
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40, 48)  # bank-128 kits both soundfonts have: standard, room, power, ...
SLOT_MS = 4000  # each MIDI clip's slot: sound (<= 2.6 s) + release, then silence before the next


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Clips per eval class and eval classes per set, tuning-corpus clips per synthetic source, pieces per record."""

    classes: int
    clips_per_class: int
    speech: int
    instruments: int
    percussion: int
    pieces_per_recording: int


SIZES = {"default": Sizes(12, 24, 700, 500, 250, 24), "quick": Sizes(10, 20, 300, 200, 100, 6)}
EVAL_SETS = ("words", "speakers", "instruments", "percussion")


class MissingPackagesError(RuntimeError):
    """A Debian package the offline audio needs is not installed; the message has the apt-get command."""


def check_packages() -> None:
    """Raises MissingPackagesError naming every missing package of REQUIRED_PACKAGES and the command to install."""
    missing = [p for p, used in PACKAGES.items()
               if not (os.path.exists(used) if used.startswith("/") else shutil.which(used))]
    if missing:
        raise MissingPackagesError(
            f"benchmarks/offline_audio.py renders audio with Debian packages; missing: {' '.join(missing)}. Install "
            f"all it needs with: apt-get update && apt-get install -y --no-install-recommends "
            f"{' '.join(REQUIRED_PACKAGES)} (or pass your own folders to benchmarks/replicate.py: --unlabelled, "
            f"--eval)")


# ------------------------------------------------------------------------------------------------------------ plan
def _distinct(rng: np.random.Generator, choices: Sequence[Sequence[Any]], count: int, what: str) -> list[tuple]:
    """`count` distinct tuples drawn uniformly from the product of `choices` (without replacement)."""
    sizes = [len(c) for c in choices]
    total = int(np.prod(sizes))
    if total < count:
        raise ValueError(f"{what}: only {total} distinct parameter combinations for {count} clips")
    flat = rng.choice(total, size=count, replace=False)
    return [tuple(c[i] for c, i in zip(choices, np.unravel_index(f, sizes))) for f in flat]


def _phrase(rng: np.random.Generator, words: Sequence[str], low: int, high: int) -> str:
    return " ".join(rng.choice(words, size=int(rng.integers(low, high + 1)), replace=False))


def _voice_pool(rng: np.random.Generator, size: Sizes) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(speakers-set voices, tuning voices): disjoint (accent, variant) pairs; flite voices split by SPEAKER_FLITE."""
    pairs = [(a, v) for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS]
    order = rng.permutation(len(pairs))
    n_espeak = size.classes - len(SPEAKER_FLITE)
    # one accent per variant among the speakers, so two classes never differ by accent alone
    speakers, used = [], set()
    for i in order:
        if len(speakers) < n_espeak and pairs[i][1] not in used:
            speakers.append(pairs[i])
            used.add(pairs[i][1])
    tuning = [pairs[i] for i in order if pairs[i][1] not in used]
    return ([("espeak", f"{a}+{v}") for a, v in speakers] + [("flite", v) for v in SPEAKER_FLITE],
            [("espeak", f"{a}+{v}") for a, v in tuning]
            + [("flite", v) for v in FLITE_VOICES if v not in SPEAKER_FLITE])


def _speech(path: str, engine: str, voice: str, text: str, speed: float, pitch: float, gain: float) -> dict:
    return dict(path=path, kind="speech", engine=engine, voice=voice, text=text, speed=float(speed),
                pitch=float(pitch), gain=float(gain))


def _midi(path: str, soundfont: str, channel: int, program: int, notes: list[tuple[int, int, int, int]],
          gain: float) -> dict:
    return dict(path=path, kind="midi", soundfont=soundfont, channel=channel, program=program, notes=notes,
                gain=float(gain))


def plan_clips(size: Sizes, seed: int) -> list[dict]:
    """Every clip to render, as plain dicts with a relative output `path` (see the module docstring)."""
    specs: list[dict] = []
    rng = np.random.default_rng([seed, 0])
    speakers, tuning_voices = _voice_pool(rng, size)
    all_voices = [("espeak", f"{a}+{v}") for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS] + \
                 [("flite", v) for v in FLITE_VOICES]
    speeds, pitches = np.arange(0.8, 1.25, 0.05), np.arange(25, 80, 5)

    # spares for the sets whose parameters may not all change the sound (select_distinct keeps distinct clips):
    # a flite voice may ignore the pitch target, several GM kits share a drum's sample
    candidates = size.clips_per_class * 3 // 2
    for c, word in enumerate(EVAL_WORDS[:size.classes]):
        r = np.random.default_rng([seed, 1, c])
        for k, (vi, s, p) in enumerate(_distinct(r, [range(len(all_voices)), speeds, pitches], candidates,
                                                 f"words/{word}")):
            specs.append(_speech(f"words/{word}/{word}_{k:03d}.wav", *all_voices[vi], word, s, p, r.uniform(0.3, 0.9)))
    for c, (engine, voice) in enumerate(speakers):
        r = np.random.default_rng([seed, 2, c])
        name = voice.replace("+", "_")
        for k in range(size.clips_per_class):  # the voice's pitch stays; speed and sentence change
            specs.append(_speech(f"speakers/{name}/{name}_{k:03d}.wav", engine, voice,
                                 _phrase(r, TUNING_WORDS, 3, 6), r.uniform(0.85, 1.15), 50, r.uniform(0.3, 0.9)))
    r = np.random.default_rng([seed, 3])
    for k in range(size.speech):
        engine, voice = tuning_voices[int(r.integers(len(tuning_voices)))]
        specs.append(_speech(f"unlabelled/speech/speech_{k:04d}.wav", engine, voice, _phrase(r, TUNING_WORDS, 1, 5),
                             r.uniform(0.8, 1.2), r.integers(25, 80), r.uniform(0.3, 0.9)))

    eval_programs = list(GM_PROGRAMS)[:size.classes]
    for c, program in enumerate(eval_programs):
        r = np.random.default_rng([seed, 4, c])
        low = 28 if program in BASS_PROGRAMS else 48
        draws = _distinct(r, [list(SOUNDFONTS), range(low, low + 25), (40, 64, 88, 112), (600, 1000, 1400)],
                          candidates, f"instruments/{program}")
        for k, (font, pitch, vel, dur) in enumerate(draws):
            name = GM_PROGRAMS[program]
            specs.append(_midi(f"instruments/{name}/{name}_{k:03d}.wav", font, 0, program,
                               [(0, dur, int(pitch), int(vel))], r.uniform(0.3, 0.9)))
    near = {p + d for p in eval_programs for d in (-1, 0, 1)}
    tuning_programs = [p for p in range(128) if p not in near]
    r = np.random.default_rng([seed, 5])
    for k in range(size.instruments):  # melodies of 2-6 notes
        program = int(r.choice(tuning_programs))
        beat = int(r.integers(180, 500))
        n = int(r.integers(2, 7))
        n = min(n, 2600 // beat)
        root = int(r.integers(28, 45) if program in BASS_PROGRAMS else r.integers(45, 72))
        notes = [(i * beat, int(beat * r.uniform(0.6, 1.0)), root + int(r.integers(-5, 8)), int(r.integers(50, 120)))
                 for i in range(max(n, 1))]
        specs.append(_midi(f"unlabelled/instruments/melody_{k:04d}.wav", str(r.choice(list(SOUNDFONTS))), 0, program,
                           notes, r.uniform(0.3, 0.9)))

    eval_drums = list(GM_DRUMS)[:size.classes]
    for c, drum in enumerate(eval_drums):
        r = np.random.default_rng([seed, 6, c])
        rhythms = [(1, 0)] + [(hits, gap) for hits in (2, 3, 4) for gap in (300, 450, 600)]  # one hit has no gap
        draws = _distinct(r, [list(SOUNDFONTS), DRUM_KITS, (50, 80, 110), rhythms], candidates,
                          f"percussion/{drum}")
        for k, (font, kit, vel, (hits, gap)) in enumerate(draws):
            name = GM_DRUMS[drum]
            notes = [(i * gap, 150, drum, int(vel)) for i in range(hits)]
            specs.append(_midi(f"percussion/{name}/{name}_{k:03d}.wav", font, 9, kit, notes, r.uniform(0.3, 0.9)))
    tuning_drums = [d for d in range(41, 82) if d not in GM_DRUMS and d not in (44, 53, 57, 59)]
    r = np.random.default_rng([seed, 7])
    for k in range(size.percussion):  # patterns of 2-3 drums
        kit, gap = int(r.choice(DRUM_KITS)), int(r.integers(150, 400))
        drums = r.choice(tuning_drums, size=int(r.integers(2, 4)), replace=False)
        notes = [(i * gap, 150, int(drums[i % len(drums)]), int(r.integers(50, 120)))
                 for i in range(int(r.integers(3, 2400 // gap + 1)))]
        specs.append(_midi(f"unlabelled/percussion/pattern_{k:04d}.wav", str(r.choice(list(SOUNDFONTS))), 9, kit,
                           notes, r.uniform(0.3, 0.9)))

    for f, source in enumerate(sorted(p for pattern in RECORDINGS for p in glob.glob(pattern))):
        if any(fnmatch.fnmatch(os.path.basename(source), pattern) for pattern in SPOKEN_RECORDINGS):
            continue
        package = source.split("/")[4]  # /usr/share/{sounds,games}/<theme or game>/...
        stem = os.path.splitext(os.path.basename(source))[0]
        specs.append(dict(path=f"unlabelled/recordings/{package}_{stem}", kind="recording", source=source,
                          pieces=size.pieces_per_recording, gain=float(np.random.default_rng([seed, 8, f]).uniform(
                              0.3, 0.9))))
    return specs


# ---------------------------------------------------------------------------------------------------------- render
def finish_clip(x: np.ndarray, rate: int, gain: float, *, max_seconds: float = 3.0, min_seconds: float = 1.0,
                floor_db: float = -45.0) -> np.ndarray:
    """A rendered sound as a clip: mono, 16 kHz, trimmed to where it is within `floor_db` of its peak (50 ms
    margins), at most `max_seconds`, zero-padded (centred) to `min_seconds`, peak scaled to `gain`. int16 [N]."""
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != SAMPLE_RATE:
        x = soxr.resample(x, rate, SAMPLE_RATE)
    peak = np.abs(x).max() if x.size else 0.0
    if peak <= 0:
        raise ValueError("the rendered sound is silent")
    loud = np.flatnonzero(np.abs(x) >= peak * 10 ** (floor_db / 20))
    margin = int(0.05 * SAMPLE_RATE)
    x = x[max(loud[0] - margin, 0):loud[-1] + margin + 1][:int(max_seconds * SAMPLE_RATE)]
    short = int(min_seconds * SAMPLE_RATE) - x.shape[0]
    if short > 0:
        x = np.pad(x, (short // 2, short - short // 2))
    x = x * (gain / np.abs(x).max())
    return np.round(x * 32767).astype(np.int16)


def midi_file(path: str, clips: Sequence[dict]) -> float:
    """Writes one MIDI file (via mido) playing `clips` one per SLOT_MS slot, 1 tick = 1 ms; returns its seconds.

    Each clip: a program change on its channel at the slot start, then its notes (onset ms, length ms, key,
    velocity) relative to the slot; all sound off at the slot's end.
    """
    import mido

    events: list[tuple[int, int, mido.Message]] = []  # (time ms, order, message)
    for i, clip in enumerate(clips):
        t0, ch = i * SLOT_MS, clip["channel"]
        events.append((t0, 0, mido.Message("program_change", channel=ch, program=clip["program"])))
        for onset, length, key, vel in clip["notes"]:
            events.append((t0 + onset + 5, 2, mido.Message("note_on", channel=ch, note=key, velocity=vel)))
            events.append((t0 + onset + 5 + length, 1, mido.Message("note_off", channel=ch, note=key, velocity=0)))
        events.append((t0 + SLOT_MS - 10, 1, mido.Message("control_change", channel=ch, control=120, value=0)))
    events.sort(key=lambda e: (e[0], e[1]))
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=1_000_000)])  # 1000 ticks per beat = 1 s
    now = 0
    for t, _, msg in events:
        track.append(msg.copy(time=t - now))
        now = t
    track.append(mido.MetaMessage("end_of_track", time=len(clips) * SLOT_MS - now))
    mid = mido.MidiFile(ticks_per_beat=1000)
    mid.tracks.append(track)
    mid.save(path)
    return len(clips) * SLOT_MS / 1000


def _synthesise_speech(cmd: list[str], out: str) -> np.ndarray:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return sf.read(out, dtype="float64")


def _render_speech(spec: dict, tmp: str) -> tuple[np.ndarray, int]:
    out = os.path.join(tmp, "speech.wav")
    if spec["engine"] == "espeak":
        cmd = ["espeak-ng", "-v", spec["voice"], "-s", str(int(175 * spec["speed"])), "-p", str(int(spec["pitch"])),
               "-w", out, spec["text"]]
    else:  # flite: speed as a duration stretch, pitch as the f0 target (Hz) around the voice's own
        cmd = ["flite", "-voice", spec["voice"], "--setf", f"duration_stretch={1 / spec['speed']:.3f}"]
        if spec["pitch"] != 50:
            cmd += ["--setf", f"int_f0_target_mean={60 + 2 * spec['pitch']:.0f}"]
        cmd += ["-t", spec["text"], "-o", out]
    return _synthesise_speech(cmd, out)


def _render_midi(specs: Sequence[dict], tmp: str) -> list[tuple[np.ndarray, int]]:
    mid, wav = os.path.join(tmp, "clips.mid"), os.path.join(tmp, "clips.wav")
    seconds = midi_file(mid, specs)
    subprocess.run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.6", "-r", str(SAMPLE_RATE), "-F", wav,
                    SOUNDFONTS[specs[0]["soundfont"]], mid], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    audio, rate = sf.read(wav, dtype="float64")
    slot = SLOT_MS * rate // 1000
    audio = np.pad(audio, [(0, max(0, int(seconds * rate) - audio.shape[0]))] + [(0, 0)] * (audio.ndim - 1))
    return [(audio[i * slot:(i + 1) * slot], rate) for i in range(len(specs))]


def _recording_pieces(spec: dict) -> list[tuple[np.ndarray, int, str]]:
    """A recording as up to `pieces` clips: itself when <= 3 s, else evenly spread 3 s windows that are not quiet."""
    audio, rate = sf.read(spec["source"], dtype="float64", always_2d=True)
    audio = audio.mean(axis=1)
    win = 3 * rate
    if audio.shape[0] <= win:
        return [(audio, rate, spec["path"] + ".wav")]
    starts = np.linspace(0, audio.shape[0] - win, min(spec["pieces"], audio.shape[0] // win)).astype(int)
    peak = np.abs(audio).max()
    return [(audio[s:s + win], rate, f"{spec['path']}_{j:02d}.wav") for j, s in enumerate(starts)
            if np.abs(audio[s:s + win]).max() > 0.05 * peak]


def _run_job(job: tuple[str, list[dict]], out: str) -> list[tuple[str, str, float]]:
    """Renders one job's clips into `out`; returns (relative path, sha1 of the full-scale PCM, seconds) per clip."""
    kind, specs = job
    done = []
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "midi":
            rendered = [(x, rate, s) for (x, rate), s in zip(_render_midi(specs, tmp), specs)]
        elif kind == "speech":
            rendered = [(*_render_speech(s, tmp), s) for s in specs]
        else:
            rendered = [(x, rate, {**specs[0], "path": p}) for x, rate, p in _recording_pieces(specs[0])]
        for x, rate, spec in rendered:
            try:
                unit = finish_clip(x, rate, 1.0)
            except ValueError as err:
                raise ValueError(f"{spec['path']}: {err} ({spec})") from err
            pcm = np.round(unit * spec["gain"]).astype(np.int16)
            path = os.path.join(out, spec["path"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
            # hashed at full scale: two clips that differ only in level count as the same sound
            done.append((spec["path"], hashlib.sha1(unit.tobytes()).hexdigest(), pcm.shape[0] / SAMPLE_RATE))
    return done


def _jobs(specs: Sequence[dict]) -> list[tuple[str, list[dict]]]:
    """Speech in chunks of 40, MIDI in chunks of 100 clips per soundfont (one fluidsynth call each), a job per
    recording; longest jobs first so the pool ends together."""
    jobs: list[tuple[str, list[dict]]] = []
    speech = [s for s in specs if s["kind"] == "speech"]
    jobs += [("speech", speech[i:i + 40]) for i in range(0, len(speech), 40)]
    for font in SOUNDFONTS:
        midi = [s for s in specs if s["kind"] == "midi" and s["soundfont"] == font]
        jobs += [("midi", midi[i:i + 100]) for i in range(0, len(midi), 100)]
    jobs += [("recording", [s]) for s in specs if s["kind"] == "recording"]
    return sorted(jobs, key=lambda j: -len(j[1]))


# ----------------------------------------------------------------------------------------------------------- build
@dataclasses.dataclass(frozen=True)
class OfflineAudio:
    """What `build_offline_audio` made: the unlabelled corpus folder and the eval sets {name: folder}."""

    root: str
    unlabelled: str
    eval_sets: dict[str, str]
    summary: dict[str, Any]


def select_distinct(written: Sequence[tuple[str, str, float]], clips_per_class: int
                    ) -> tuple[list[tuple[str, str, float]], list[str]]:
    """(kept, dropped paths): per eval class the first `clips_per_class` clips (plan order) whose sound differs from
    every clip kept before; tuning clips that repeat a kept one are dropped too.

    Several GM drum kits share one sample for some drums (a cowbell is a cowbell) and a voice may ignore a parameter,
    so the plan draws more candidates than it needs for words and the MIDI sets and this keeps distinct ones. Raises when a class ends short, or when two eval
    classes hold the same sound.
    """
    kept, dropped, owner, per_class = [], [], {}, {}
    for path, digest, seconds in sorted(written):
        parts = path.split("/")
        cls = "/".join(parts[:2]) if parts[0] in EVAL_SETS else None
        if digest in owner:
            if cls is not None and owner[digest][0] is not None and owner[digest][0] != cls:
                raise RuntimeError(f"offline audio: {path} and {owner[digest][1]} came out identical across two "
                                   f"classes (a bug in the parameter plan)")
            dropped.append(path)
        elif cls is not None and per_class.get(cls, 0) >= clips_per_class:
            dropped.append(path)  # a spare candidate
        else:
            owner[digest] = (cls, path)
            per_class[cls] = per_class.get(cls, 0) + 1
            kept.append((path, digest, seconds))
    short = {c: n for c, n in per_class.items() if c is not None and n < clips_per_class}
    if short:
        raise RuntimeError(f"offline audio: too few distinct clips in {short} (want {clips_per_class}); the plan's "
                           f"parameter grid for these classes needs more variety")
    return kept, dropped


def _summary(size: str, seed: int, written: list[tuple[str, str, float]]) -> dict[str, Any]:
    sets: dict[str, Any] = {}
    for name in EVAL_SETS:
        counts: dict[str, int] = {}
        for path, _, _ in written:
            parts = path.split("/")
            if parts[0] == name:
                counts[parts[1]] = counts.get(parts[1], 0) + 1
        sets[name] = {"classes": len(counts), "clips": sum(counts.values()),
                      "min_clips_per_class": min(counts.values()),
                      "class_names": sorted(counts)}
    unlabelled = [(p, s) for p, _, s in written if p.startswith("unlabelled/")]
    sources: dict[str, int] = {}
    for p, _ in unlabelled:
        sources[p.split("/")[1]] = sources.get(p.split("/")[1], 0) + 1
    return {"version": VERSION, "size": size, "seed": seed, "packages": list(REQUIRED_PACKAGES), "eval_sets": sets,
            "unlabelled": {"clips": len(unlabelled), "hours": sum(s for _, s in unlabelled) / 3600,
                           "by_source": sources}}


def build_offline_audio(out: str | os.PathLike, *, size: str = "default", seed: int = 0, workers: int = 2,
                        progress: bool = True) -> OfflineAudio:
    """Builds (or reuses, when `out/offline_audio.json` matches size, seed and VERSION) the corpus and eval sets."""
    if size not in SIZES:
        raise ValueError(f"offline audio size must be one of {sorted(SIZES)}, got {size!r}")
    out = os.path.abspath(os.fspath(out))
    meta_path = os.path.join(out, "offline_audio.json")
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            summary = json.load(f)
        if (summary.get("version"), summary.get("size"), summary.get("seed")) == (VERSION, size, seed):
            return OfflineAudio(out, os.path.join(out, "unlabelled"), {n: os.path.join(out, n) for n in EVAL_SETS},
                                summary)
    check_packages()
    specs = plan_clips(SIZES[size], seed)
    partial = os.path.join(out, ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    jobs = _jobs(specs)
    written: list[tuple[str, str, float]] = []
    # spawn: the caller may have JAX (threads) loaded, which a forked child must not inherit
    with concurrent.futures.ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = [ex.submit(_run_job, job, partial) for job in jobs]
        with tqdm(total=len(specs), desc="rendering offline audio", unit="clip", disable=not progress) as bar:
            for fut, job in zip(futures, jobs):
                written += fut.result()
                bar.update(len(job[1]))
    written, dropped = select_distinct(written, SIZES[size].clips_per_class)
    for path in dropped:
        os.remove(os.path.join(partial, path))
    summary = _summary(size, seed, written)
    for name in (*EVAL_SETS, "unlabelled"):
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
        os.replace(os.path.join(partial, name), os.path.join(out, name))
    shutil.rmtree(partial)
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return OfflineAudio(out, os.path.join(out, "unlabelled"), {n: os.path.join(out, n) for n in EVAL_SETS}, summary)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", default="default", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    args = parser.parse_args(argv)
    try:
        built = build_offline_audio(args.out, size=args.size, seed=args.seed, workers=args.workers)
    except MissingPackagesError as err:
        sys.exit(str(err))
    s = built.summary
    for name, info in s["eval_sets"].items():
        print(f"{built.eval_sets[name]}: {info['classes']} classes, {info['clips']} clips "
              f"(>= {info['min_clips_per_class']} per class)")
    print(f"{built.unlabelled}: {s['unlabelled']['clips']} clips, {60 * s['unlabelled']['hours']:.1f} min, "
          f"{s['unlabelled']['by_source']}")


if __name__ == "__main__":
    main()
