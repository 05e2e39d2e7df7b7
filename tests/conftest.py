"""Shared fixtures: the real-data root (skip or fail when absent) and a private feature cache per test."""
import os
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """$TPRUNE_DATA as a Path. Missing -> skip with the reason, or fail when TPRUNE_REQUIRE_REALDATA=1 (CI)."""
    value = os.environ.get("TPRUNE_DATA")
    path = None
    if value:
        path = Path(value).expanduser()
        if not path.is_absolute() and not path.exists():
            path = REPO / path
    if path is not None and path.is_dir():
        return path.resolve()
    reason = (f"real audio not found: TPRUNE_DATA={value!r} is not a folder" if value
              else "real audio not found: set TPRUNE_DATA to the data folder (e.g. ../shared/data)")
    if os.environ.get("TPRUNE_REQUIRE_REALDATA") == "1":
        pytest.fail(reason + " — TPRUNE_REQUIRE_REALDATA=1 forbids skipping real-data tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, private TPRUNE_CACHE for one test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("TPRUNE_CACHE", str(path))
    return path


# ------------------------------------------------------------------ tiny in-memory feature sets

def toy_set(n, seed, frames=48, classes=3, split="train"):
    """Class c = a bright band of mel bins 30c..30c+20 on noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = 0.3 * torch.randn(n, frames, 128, generator=g)
    for c in range(classes):
        x[y == c, :, 30 * c:30 * c + 20] += 1.0
    return types.SimpleNamespace(x=x, y=y, classes=[f"c{i}" for i in range(classes)], split=split,
                                 norm=(0.0, 1.0), source="synthetic", ids=[f"{split}{i}" for i in range(n)])


class Interrupted(Exception):
    """Raised by ``stop_at``: the run stops as if killed there (what it saved so far stays)."""


def stop_at(monkeypatch, task_cls, at_step: int):
    """Make ``task_cls.step`` (a ``loop.Task``) raise Interrupted at iteration ``at_step``; returns the undo."""
    real = task_cls.step

    def step(self, idx, step):
        if step == at_step:
            raise Interrupted(step)
        return real(self, idx, step)

    monkeypatch.setattr(task_cls, "step", step)
    return lambda: monkeypatch.setattr(task_cls, "step", real)


# ------------------------------------------------------------------ tiny fake datasets in the official layouts

def write_tone(path, seconds=0.1, sr=16000, freq=440.0, subtype=None):
    import numpy as np
    import soundfile as sf
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), 0.3 * np.sin(2 * np.pi * freq * t), sr, subtype=subtype)
    return path


def make_esc50(root: Path, per_fold=2) -> Path:
    """ESC-50-master/audio/*.wav + meta/esc50.csv: 5 folds x per_fold clips, 2 classes, one source per clip."""
    folder = root / "ESC-50-master"
    (folder / "audio").mkdir(parents=True)
    (folder / "meta").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for j in range(per_fold):
            target, src = j % 2, f"{fold}{j:04d}"
            name = f"{fold}-{src}-A-{target}.wav"
            write_tone(folder / "audio" / name, freq=300 + 200 * target)
            rows.append(f"{name},{fold},{target},{['dog', 'rain'][target]},False,{src},A")
    (folder / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return folder


def make_us8k(root: Path, folds=(1, 2, 3), recordings=4, slices=3) -> Path:
    """UrbanSound8K/audio/fold<k>/*.wav + metadata/UrbanSound8K.csv; fsIDs unique per fold, 2 classes."""
    folder = root / "UrbanSound8K"
    (folder / "metadata").mkdir(parents=True)
    rows = ["slice_file_name,fsID,start,end,salience,fold,classID,class"]
    for fold in folds:
        (folder / "audio" / f"fold{fold}").mkdir(parents=True)
        for r in range(recordings):
            fsid, cid = 1000 * fold + r, r % 2
            for s in range(slices):
                name = f"{fsid}-{cid}-0-{s}.wav"
                write_tone(folder / "audio" / f"fold{fold}" / name, freq=200 + 100 * cid + 10 * s)
                rows.append(f"{name},{fsid},0,1,1,{fold},{cid},{['air_conditioner', 'car_horn'][cid]}")
    (folder / "metadata" / "UrbanSound8K.csv").write_text("\n".join(rows) + "\n")
    return folder


SC_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]


def make_speechcommands(root: Path, official=True, speakers=12) -> Path:
    """Official v0.02 layout (with 'bed' as an extra word, _background_noise_, lists) or the shared test copy."""
    folder = root / ("speech_commands_v0.02" if official else "speechcommands-test-v0.02")
    words = SC_WORDS + (["bed", "_background_noise_"] if official else ["_unknown_"])
    spk = [f"{i:08x}" for i in range(0xA0, 0xA0 + speakers)]
    for w in words:
        (folder / w).mkdir(parents=True)
        if w == "_background_noise_":
            write_tone(folder / w / "white_noise.wav", seconds=0.5)
            continue
        for s in spk[: speakers // 2 if w == "_unknown_" else speakers]:
            if official:
                write_tone(folder / w / f"{s}_nohash_0.wav")
            else:
                name = f"bird_{s}_nohash_0.flac" if w == "_unknown_" else f"{s}_nohash_0.flac"
                write_tone(folder / w / name)
    if official:  # speakers 0-1 validation, 2-3 testing, the rest training
        for fname, chosen in (("validation_list.txt", spk[:2]), ("testing_list.txt", spk[2:4])):
            (folder / fname).write_text("".join(f"{w}/{s}_nohash_0.wav\n" for w in SC_WORDS + ["bed"] for s in chosen))
    return folder


@pytest.fixture
def fake_esc50(tmp_path):
    return make_esc50(tmp_path / "data")


@pytest.fixture
def fake_us8k(tmp_path):
    return make_us8k(tmp_path / "data")


@pytest.fixture(scope="module")
def one_thread():
    """Model tests run single-threaded: on a shared 2-core machine more threads only fight over the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_class_folders(root: Path, name="birds", classes=("wren", "owl", "crow"), per_class=6) -> Path:
    """<root>/<name>/<label>/c<k>.{wav,flac,ogg}: mixed formats, 16/8/44.1 kHz, mono and stereo, 0.3-0.8 s."""
    import numpy as np
    import soundfile as sf
    folder = root / name
    for i, label in enumerate(classes):
        (folder / label).mkdir(parents=True)
        for k in range(per_class):
            sr, ext = [(16000, "wav"), (8000, "flac"), (44100, "ogg")][k % 3]
            t = np.arange(int(sr * (0.3 + 0.1 * (k % 6)))) / sr
            x = 0.3 * np.sin(2 * np.pi * (300 + 250 * i) * t)
            sf.write(str(folder / label / f"c{k}.{ext}"), np.stack([x, 0.5 * x], 1) if k % 2 else x, sr)
    return folder


def make_voxceleb1(root: Path, speakers=3, videos=3, utterances=2, seconds=0.5) -> Path:
    """VoxCeleb1/wav/<id1000k>/<video>/<n>.wav + iden_split.txt: per speaker, video 0 -> test, 1 -> val, rest train."""
    folder = root / "VoxCeleb1"
    lines = []
    for s in range(speakers):
        for v in range(videos):
            for n in range(1, utterances + 1):
                rel = f"id{10001 + s}/vid{s}x{v}/{n:05d}.wav"
                (folder / "wav" / rel).parent.mkdir(parents=True, exist_ok=True)
                write_tone(folder / "wav" / rel, seconds=seconds + 0.25 * n, freq=200 + 150 * s)
                lines.append(f"{3 if v == 0 else 2 if v == 1 else 1} {rel}")
    (folder / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return folder


MIX_SOURCES = ("low_tone", "high_tone", "low_noise", "high_noise")


def mixture(sources, seconds=0.5, sr=16000, seed=0):
    """The sum of some of four sources at random levels: a 400 Hz tone, a 2.5 kHz tone, noise in 800-1400 Hz and
    noise in 4.5-6.5 kHz (names in MIX_SOURCES), over faint white noise."""
    import numpy as np
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = 0.005 * rng.standard_normal(n)
    for name in sources:
        level = rng.uniform(0.15, 0.3)
        if name.endswith("tone"):
            out += level * np.sin(2 * np.pi * (400 if name == "low_tone" else 2500) * t + rng.uniform(0, 6.3))
        else:
            lo, hi = (800, 1400) if name == "low_noise" else (4500, 6500)
            spec = np.fft.rfft(rng.standard_normal(n))
            freqs = np.fft.rfftfreq(n, 1 / sr)
            band = np.fft.irfft(spec * ((freqs >= lo) & (freqs <= hi)), n)
            out += level * band / band.std() / 2
    return out.astype("float32")


def make_mixtures(root, name="mixtures", per_pair=12, seconds=0.5, columns="split", index=None):
    """<root>/<name>/metadata.csv (file,labels + a `split` or `group` column or neither) over clips that each sum
    two of the four MIX_SOURCES, labelled with both (`;`-separated); every pair `per_pair` times. With
    ``columns="split"`` the k-th clip of a pair goes to val when k % 6 == 4, test when k % 6 == 5, else train.
    ``index``: "classes" writes classes.csv (index,name) in MIX_SOURCES order."""
    import itertools

    import soundfile as sf
    folder = root / name
    (folder / "clips").mkdir(parents=True)
    head = "file,labels" + {"split": ",split", "group": ",group", None: ""}[columns]
    lines = [head]
    for p, pair in enumerate(itertools.combinations(MIX_SOURCES, 2)):
        for k in range(per_pair):
            rel = f"clips/{p}_{k}.wav"
            sf.write(str(folder / rel), mixture(pair, seconds, seed=100 * p + k), 16000)
            extra = {"split": "," + ("val" if k % 6 == 4 else "test" if k % 6 == 5 else "train"),
                     "group": f",pair{p}-rec{k // 2}", None: ""}[columns]
            lines.append(f"{rel},{pair[0]};{pair[1]}{extra}")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    if index == "classes":
        (folder / "classes.csv").write_text("index,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(MIX_SOURCES)))
    return folder


# ------------------------------------------------------------------ MP3 data inside a .wav

def write_mp3_in_wav(path, seconds=1.0, sr=16000, freq=440.0):
    """A .wav holding MP3 frames (format tag 0x55), as some sound libraries ship them, without the LAME/Xing info
    frame that tells a decoder the encoder's delay and padding: libsndfile then estimates the length from the
    stream and decodes 100-400 samples fewer. Needs libsndfile's MP3 encoder (skips the test otherwise)."""
    import io
    import struct

    import numpy as np
    import soundfile as sf
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot encode MP3")
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * freq * t), sr, format="MP3", bitrate_mode="CONSTANT",
             compression_level=0.5)   # constant bitrate: libsndfile's length estimate is then close, not wild
    frames = _mp3_frames(buf.getvalue())
    if b"Xing" in frames[0] or b"Info" in frames[0]:
        frames = frames[1:]
    data = b"".join(frames)
    per_frame = 1152 if sr > 24000 else 576
    # WAVEFORMATEX + MPEGLAYER3WAVEFORMAT (id 1, padding flag 2, block size, 1 frame per block, codec delay 1393)
    fmt = struct.pack("<HHIIHH", 0x55, 1, sr, len(data) * sr // (len(frames) * per_frame), 1, 0)
    fmt += struct.pack("<HHIHHH", 12, 1, 2, len(frames[0]), 1, 1393)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<II", 4, len(t))
    body += b"data" + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def _mp3_frames(mp3: bytes) -> list:
    """The MPEG-1/2 layer III frames of an MP3 stream (after any ID3v2 tag), split by their headers' lengths."""
    kbps = {3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
            2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}
    rates = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
    i = 10 + ((mp3[6] << 21) | (mp3[7] << 14) | (mp3[8] << 7) | mp3[9]) if mp3[:3] == b"ID3" else 0
    frames = []
    while i + 4 <= len(mp3):
        h = int.from_bytes(mp3[i:i + 4], "big")
        version = (h >> 19) & 3
        bitrate = kbps[3 if version == 3 else 2][(h >> 12) & 15] * 1000
        size = (144 if version == 3 else 72) * bitrate // rates[version][(h >> 10) & 3] + ((h >> 9) & 1)
        frames.append(mp3[i:i + size])
        i += size
    return frames
