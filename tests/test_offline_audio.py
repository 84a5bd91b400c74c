"""benchmarks/offline_audio.py without its Debian packages: the clip plan, the MIDI writer, clip finishing, checks."""
import os
import sys

import mido
import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import offline_audio as oa  # noqa: E402


@pytest.fixture(scope="module")
def plan():
    return oa.plan_clips(oa.SIZES["quick"], seed=0)


def _by_set(plan, name):
    return [s for s in plan if s["path"].startswith(name + "/")]


def test_every_eval_class_has_distinct_clips(plan):
    size = oa.SIZES["quick"]
    assert size.clips_per_class >= 20
    for name in oa.EVAL_SETS:
        specs = _by_set(plan, name)
        classes = {s["path"].split("/")[1] for s in specs}
        assert len(classes) == size.classes, name
        for cls in classes:
            members = [s for s in specs if s["path"].split("/")[1] == cls]
            # spares where a parameter may not change the sound (select_distinct keeps the distinct ones)
            spares = name != "speakers"
            assert len(members) == (size.clips_per_class * 3 // 2 if spares else size.clips_per_class)
            # the parameters that make the sound (all but the output path and the final level) differ clip to clip
            params = {repr({k: v for k, v in s.items() if k not in ("path", "gain")}) for s in members}
            assert len(params) == len(members), f"{name}/{cls} repeats a parameter draw"
    assert len({s["path"] for s in plan}) == len(plan)


def test_eval_classes_never_occur_in_the_tuning_corpus(plan):
    tuning = _by_set(plan, "unlabelled")
    eval_words = {s["text"] for s in _by_set(plan, "words")}
    spoken = {w for s in tuning if s["kind"] == "speech" for w in s["text"].split()}
    assert eval_words and not eval_words & spoken
    speakers = {(s["engine"], s["voice"]) for s in _by_set(plan, "speakers")}
    assert not speakers & {(s["engine"], s["voice"]) for s in tuning if s["kind"] == "speech"}
    programs = {s["program"] for s in _by_set(plan, "instruments")}
    tuning_programs = {s["program"] for s in tuning if s["kind"] == "midi" and s["channel"] == 0}
    assert not {p + d for p in programs for d in (-1, 0, 1)} & tuning_programs
    drums = {n[2] for s in _by_set(plan, "percussion") for n in s["notes"]}
    tuning_drums = {n[2] for s in tuning if s["kind"] == "midi" and s["channel"] == 9 for n in s["notes"]}
    assert drums and tuning_drums and not drums & tuning_drums
    # the packaged recordings that say an eval word ("front left", "let's go") are left out
    sources = [os.path.basename(s["source"]) for s in tuning if s["kind"] == "recording"]
    assert not [x for x in sources if x.startswith(("audio-channel-", "Front_")) or x == "letsgo.wav"]


def test_plan_is_seeded():
    a, b = oa.plan_clips(oa.SIZES["quick"], 0), oa.plan_clips(oa.SIZES["quick"], 0)
    c = oa.plan_clips(oa.SIZES["quick"], 1)
    assert a == b
    assert [s.get("text") for s in a if s["kind"] == "speech"] != [s.get("text") for s in c if s["kind"] == "speech"]


def test_midi_file_places_each_clip_in_its_slot(tmp_path):
    clips = [dict(channel=0, program=24, notes=[(0, 600, 60, 100)]),
             dict(channel=9, program=25, notes=[(0, 150, 38, 80), (450, 150, 38, 80)])]
    seconds = oa.midi_file(str(tmp_path / "x.mid"), clips)
    assert seconds == 2 * oa.SLOT_MS / 1000
    mid = mido.MidiFile(str(tmp_path / "x.mid"))
    assert mid.ticks_per_beat == 1000 and abs(mid.length - seconds) < 1e-6  # 1 tick = 1 ms at 1 s per beat
    now, events = 0, []
    for msg in mid.tracks[0]:
        now += msg.time
        if not msg.is_meta:
            events.append((now, msg.type, msg.channel, getattr(msg, "note", getattr(msg, "program", None))))
    slot = oa.SLOT_MS
    assert (0, "program_change", 0, 24) in events and (slot, "program_change", 9, 25) in events
    assert (5, "note_on", 0, 60) in events and (605, "note_off", 0, 60) in events
    assert [(t, n) for t, kind, ch, n in events if kind == "note_on" and ch == 9] == [(slot + 5, 38), (slot + 455, 38)]


def test_finish_clip_trims_pads_caps_and_levels():
    rate = 22050
    x = np.zeros(rate * 2)
    x[rate // 2:rate // 2 + rate // 5] = np.sin(np.arange(rate // 5) * 0.3)  # 0.2 s of tone after 0.5 s of silence
    out = oa.finish_clip(np.stack([x, x], axis=1), rate, 0.5)
    assert out.dtype == np.int16 and out.shape == (oa.SAMPLE_RATE,)  # 0.2 s + margins, padded to 1 s
    assert abs(np.abs(out).max() / 32767 - 0.5) < 1e-3
    loud = np.flatnonzero(np.abs(out) > 100)
    centre = (loud[0] + loud[-1]) / 2
    assert abs(centre - oa.SAMPLE_RATE / 2) < 0.02 * oa.SAMPLE_RATE  # padded on both sides
    long = oa.finish_clip(np.sin(np.arange(rate * 5) * 0.1), rate, 0.9)
    assert long.shape == (3 * oa.SAMPLE_RATE,)
    with pytest.raises(ValueError, match="silent"):
        oa.finish_clip(np.zeros(1000), oa.SAMPLE_RATE, 0.5)


def test_long_recordings_become_spread_pieces_without_quiet_ones(tmp_path):
    rate = 16000
    t = np.arange(rate * 30) / rate
    audio = 0.5 * np.sin(2 * np.pi * 440 * t)
    audio[rate * 12:rate * 18] = 0.0  # 6 quiet seconds: the window that falls there is left out
    sf.write(tmp_path / "song.wav", audio, rate)
    pieces = oa._recording_pieces(dict(source=str(tmp_path / "song.wav"), pieces=5, path="r/song"))
    # starts at 0, 6.75, 13.5, 20.25, 27 s: the one at 13.5 s lies inside the quiet part
    assert [p for _, _, p in pieces] == ["r/song_00.wav", "r/song_01.wav", "r/song_03.wav", "r/song_04.wav"]
    assert all(x.shape == (3 * rate,) and r == rate for x, r, _ in pieces)


def test_missing_packages_are_named_with_the_install_command(monkeypatch):
    monkeypatch.setattr(oa, "PACKAGES", {"espeak-ng": "no-such-program-xyz", "fluid-soundfont-gm": "/no/such/file"})
    with pytest.raises(oa.MissingPackagesError) as err:
        oa.check_packages()
    message = str(err.value)
    assert "missing: espeak-ng fluid-soundfont-gm" in message
    assert "apt-get install -y --no-install-recommends " + " ".join(oa.REQUIRED_PACKAGES) in message


def test_select_distinct_keeps_the_first_distinct_clips_per_class():
    written = [("percussion/cowbell/c_000.wav", "h1", 1.0), ("percussion/cowbell/c_001.wav", "h1", 1.0),
               ("percussion/cowbell/c_002.wav", "h2", 1.0), ("percussion/cowbell/c_003.wav", "h3", 1.0),
               ("percussion/snare/s_000.wav", "h4", 1.0), ("percussion/snare/s_001.wav", "h5", 1.0),
               ("unlabelled/percussion/p_000.wav", "h6", 1.0), ("unlabelled/percussion/p_001.wav", "h6", 1.0)]
    kept, dropped = oa.select_distinct(written[::-1], clips_per_class=2)
    assert [p for p, _, _ in kept] == ["percussion/cowbell/c_000.wav", "percussion/cowbell/c_002.wav",
                                       "percussion/snare/s_000.wav", "percussion/snare/s_001.wav",
                                       "unlabelled/percussion/p_000.wav"]
    assert sorted(dropped) == ["percussion/cowbell/c_001.wav", "percussion/cowbell/c_003.wav",
                               "unlabelled/percussion/p_001.wav"]
    with pytest.raises(RuntimeError, match="too few distinct clips"):
        oa.select_distinct(written, clips_per_class=3)
    with pytest.raises(RuntimeError, match="across two classes"):
        oa.select_distinct(written + [("words/yes/y_000.wav", "h4", 1.0)], clips_per_class=2)
