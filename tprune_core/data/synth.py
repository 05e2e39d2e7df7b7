"""The synthetic audio generator behind ``datasets.synthetic``: deterministic clips whose class lives in
time-frequency structure, for tests, the smoke build and machines without real data (every output made from it
says so)."""
import numpy as np

from .clips import Clip

SYNTH_RATE = 16000
SYNTH_VERSION = 1  # bump when the generator changes: it is part of the feature-cache key
SYNTH_FLAVOURS = {"speech": 1.0, "ambient": 4.0}  # flavour -> default clip length in seconds


class SynthRenderer:
    """Renders clip k of a synthetic dataset. Class identity lives in time-frequency structure (sweep direction,
    harmonicity, modulation rate, band, rhythm); source k // 10 sets a pitch scale and the background level."""

    def __init__(self, flavour, seed, seconds):
        self.flavour, self.seed, self.n = flavour, int(seed), int(round(seconds * SYNTH_RATE))

    def render(self, clip: Clip) -> np.ndarray:
        k = int(clip.path.rsplit("/", 1)[1])
        fl = list(SYNTH_FLAVOURS).index(self.flavour)
        src = np.random.default_rng([self.seed, fl, 1, k // 10])  # per-source traits
        rng = np.random.default_rng([self.seed, fl, 2, k])        # per-clip randomness
        pitch = src.uniform(0.8, 1.25)
        wave = (_speech if self.flavour == "speech" else _ambient)(self.n, k % 10, rng, pitch, src)
        peak = np.abs(wave).max()
        return (wave * (0.9 / peak) if peak > 0.9 else wave).astype(np.float32)


# ---------------------------------------------------------------------------------------------- building blocks

def _tone(freq, n, harmonics=1, decay=0.6):
    """Harmonic tone following an instantaneous frequency (scalar or per-sample array)."""
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(freq, (n,))) / SYNTH_RATE
    return sum(decay ** (h - 1) * np.sin(h * phase) for h in range(1, harmonics + 1) if h * np.max(freq) < 7800)


def _band(rng, n, lo, hi):
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SYNTH_RATE)
    spec[(f < lo) | (f > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / (x.std() + 1e-9)


def _env(n, attack=0.01):
    a = max(1, min(n // 2, int(attack * SYNTH_RATE)))
    e = np.ones(n)
    e[:a] = np.linspace(0, 1, a)
    e[-a:] = np.linspace(1, 0, a)
    return e


def _speech(n, label, rng, pitch, src):
    """One short event on near-silence, at a random time."""
    sr = SYNTH_RATE
    d = min(n, int(rng.uniform(0.25, 0.5) * sr))
    f0 = rng.uniform(180, 320) * pitch
    t = np.arange(d) / sr
    if label == 0:
        ev = _tone(np.linspace(f0, 3 * f0, d), d, 4)
    elif label == 1:
        ev = _tone(np.linspace(3 * f0, f0, d), d, 4)
    elif label == 2:
        ev = _tone(f0, d, 6)
    elif label == 3:
        ev, b = np.zeros(d), int(0.06 * sr)
        for start in (0, int(0.18 * sr)):
            ev[start:start + b] = _band(rng, b, 1000, 4000) * _env(b, 0.005)
    elif label == 4:
        ev, b = np.zeros(d), int(0.05 * sr)
        for i in range(3):
            ev[i * 2 * b:i * 2 * b + b] = _tone(2 * f0, b) * _env(b, 0.005)
    elif label == 5:
        ev = 0.5 * _band(rng, d, 100, 600)
    elif label == 6:
        ev = 0.5 * _band(rng, d, 3000, 6000)
    elif label == 7:
        ev = _tone(2 * f0 * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(6, 8) * t)), d, 3)
    elif label == 8:
        ev = _tone(2 * f0, d, 4) * (1 - 0.9 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(15, 25) * t)))
    else:
        ev = _tone(1.5 * f0, d) + _tone(6 * f0, d)
    wave = 1e-3 * src.uniform(0.5, 2) * rng.standard_normal(n)  # near-silence
    start = rng.integers(0, n - d + 1)
    wave[start:start + d] += rng.uniform(0.1, 0.5) * ev * _env(d) / (np.abs(ev).max() + 1e-9)
    return wave


def _ambient(n, label, rng, pitch, src):
    """A dense scene: coloured background noise everywhere, the class's texture across the whole clip."""
    sr = SYNTH_RATE
    t = np.arange(n) / sr
    if label == 0:    # hum: low harmonic stack
        tex = _tone(rng.uniform(50, 120) * pitch, n, 10, 0.8)
    elif label == 1:  # regular clicks
        tex, rate = np.zeros(n), rng.uniform(8, 20)
        click = _band(rng, int(0.005 * sr), 500, 7000) * np.exp(-np.arange(int(0.005 * sr)) / 20)
        for s in np.arange(rng.uniform(0, 1 / rate), n / sr - 0.006, 1 / rate):
            tex[int(s * sr):int(s * sr) + len(click)] += click
    elif label == 2:  # siren: slow sinusoidal sweep
        tex = _tone(1000 * pitch + 400 * np.sin(2 * np.pi * t / rng.uniform(1, 2) + rng.uniform(0, 6)), n, 3)
    elif label == 3:  # barks: a few harmonic+noise bursts
        tex, b = np.zeros(n), int(0.15 * sr)
        for s in rng.integers(0, n - b, rng.integers(3, 7)):
            burst = _tone(rng.uniform(400, 800) * pitch, b, 5) + 0.5 * _band(rng, b, 500, 3000)
            tex[s:s + b] += burst * _env(b, 0.02)
    elif label == 4:  # rain: dense high crackle
        tex = _band(rng, n, 2000, 7500) * (rng.random(n) < 0.05) * 3 + 0.3 * _band(rng, n, 3000, 7500)
    elif label == 5:  # wind: noise whose band wanders slowly
        bands = [(100, 400), (300, 800), (700, 1600), (1500, 3000)]
        gains = [np.interp(t, np.linspace(0, t[-1], 6), rng.random(6)) for _ in bands]
        tex = sum(g * _band(rng, n, lo, hi) for g, (lo, hi) in zip(gains, bands))
    elif label == 6:  # birds: many short high up-chirps
        tex, b = np.zeros(n), int(0.07 * sr)
        for s in rng.integers(0, n - b, rng.integers(8, 16)):
            f = rng.uniform(2000, 4000) * pitch
            tex[s:s + b] += _tone(np.linspace(f, 1.4 * f, b), b) * _env(b, 0.005)
    elif label == 7:  # melody: pentatonic notes changing every 200-300 ms
        step, notes = int(rng.uniform(0.2, 0.3) * sr), 300 * pitch * 2 ** (np.array([0, 2, 4, 7, 9]) / 12)
        freq = np.repeat(rng.choice(notes, n // step + 1), step)[:n]
        tex = _tone(freq, n, 4)
    elif label == 8:  # engine: low noise pulsing at 5-10 Hz
        tex = _band(rng, n, 30, 900) * (0.2 + 0.8 * (np.sin(2 * np.pi * rng.uniform(5, 10) * t) > 0))
    else:             # alarm: two tones alternating every 250 ms
        period, f = int(0.25 * sr), rng.uniform(800, 1000) * pitch
        tex = _tone(np.where((np.arange(n) // period) % 2 == 0, f, 1.33 * f), n, 2)
    tex = tex / (tex.std() + 1e-9)
    spec = np.fft.rfft(rng.standard_normal(n))  # pink background: power falls as 1/f
    spec /= np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / sr), 20.0))
    background = np.fft.irfft(spec, n)
    background /= background.std() + 1e-9
    snr = rng.uniform(1.0, 3.0)  # texture std relative to the background
    return 0.08 * src.uniform(0.7, 1.4) * (snr * tex + background)
