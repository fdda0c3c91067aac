"""The loader on generated files: formats, down-mix and resampling, every bad input, streaming."""


import numpy as np
import pytest
import soundfile as sf

from gmptl.audio import (SAMPLE_RATE, AudioInfo, audio_info, load_audio, stream_audio,
                         to_mono_resampled, validate_waveform)
from gmptl.errors import AudioError

HAS_MP3 = "MP3" in sf.available_formats()


def sine(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    """(S,) float32 sine."""
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Frequency of the strongest FFT bin."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


def write(path, data, rate, **kw):
    sf.write(str(path), data, rate, **kw)
    return path


# --- good files -----------------------------------------------------------------------------


def test_wav_48k_stereo_to_mono_16k(tmp_path):
    x = sine(48000, 1.0)
    path = write(tmp_path / "a.wav", np.stack([x, x], axis=1), 48000, subtype="FLOAT")
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - SAMPLE_RATE) <= 1
    assert peak_hz(wave) == pytest.approx(440, abs=1)
    # Identical channels: the mean keeps the amplitude (a sum would double it).
    middle = wave[1000:-1000]
    assert np.abs(middle).max() == pytest.approx(0.5, rel=0.01)
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_downmix_is_the_mean_of_channels():
    left, right = sine(SAMPLE_RATE, 0.1), sine(SAMPLE_RATE, 0.1, freq=1000)
    out = to_mono_resampled(np.stack([left, right], axis=1), SAMPLE_RATE)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-7)
    assert to_mono_resampled(left.astype(np.float64), 8000).dtype == np.float32
    assert len(to_mono_resampled(left, SAMPLE_RATE, 8000)) == len(left) // 2


@pytest.mark.parametrize("fmt, subtype", [
    ("FLAC", None), ("OGG", "VORBIS"), ("OGG", "OPUS"),
    pytest.param("MP3", None, marks=pytest.mark.skipif(not HAS_MP3, reason="libsndfile without MP3")),
])
def test_formats_decode(tmp_path, fmt, subtype):
    path = write(tmp_path / f"a.{fmt.lower()}", sine(48000, 1.0), 48000, format=fmt, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == np.float32
    assert abs(len(wave) - SAMPLE_RATE) <= 1  # gapless: no encoder delay or padding left
    assert peak_hz(wave) == pytest.approx(440, abs=1)
    assert np.abs(wave[1000:-1000]).max() == pytest.approx(0.5, rel=0.1)  # lossy codecs


def test_audio_info_reads_the_header(tmp_path):
    path = write(tmp_path / "a.wav", np.zeros((22050, 3), np.float32), 44100)  # silence: header only
    assert audio_info(path) == AudioInfo(str(path), 44100, 3, 22050)
    assert audio_info(path).duration == 0.5


# --- bad files ------------------------------------------------------------------------------


def _bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def _truncated(tmp_path, fmt):
    path = write(tmp_path / f"cut.{fmt.lower()}", sine(48000, 1.0), 48000, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _with(value):
    def make(tmp_path):
        x = sine(16000, 1.0)
        x[8000] = value
        return write(tmp_path / "bad.wav", x, 16000, subtype="FLOAT")
    return make


BAD = {  # name: (make file, words the reason must contain, caught by the header alone)
    "missing": (lambda d: d / "nope.wav", "missing", True),
    "empty": (lambda d: _bytes(d / "empty.wav", b""), "empty", True),
    "junk": (lambda d: _bytes(d / "junk.wav", np.random.default_rng(0).bytes(4096)), "not audio", True),
    "truncated-wav": (lambda d: _truncated(d, "WAV"), "truncated", True),
    "truncated-flac": (lambda d: _truncated(d, "FLAC"), "truncated", False),
    "nan": (_with(np.nan), "NaN", False),
    "inf": (_with(np.inf), "Inf", False),
    "silence": (lambda d: write(d / "zero.wav", np.zeros(16000, np.float32), 16000), "silence", False),
    "short": (lambda d: write(d / "short.wav", sine(16000, 100 / 16000), 16000), "too short", False),
    "no-frames": (lambda d: write(d / "none.wav", np.zeros((0, 1)), 16000), "no audio frames", True),
    "rate": (lambda d: write(d / "slow.wav", sine(500, 2.0, freq=50), 500), "sample rate", True),
    "channels": (lambda d: write(d / "wide.wav", np.tile(sine(16000, 0.1)[:, None], (1, 40)), 16000),
                 "channel count", True),
}
if HAS_MP3:
    BAD["truncated-mp3"] = (lambda d: _truncated(d, "MP3"), "truncated", False)  # reads short, no error


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_raises_audio_error(tmp_path, case):
    make, reason, in_header = BAD[case]
    path = make(tmp_path)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert err.value.path == str(path)
    assert reason in err.value.reason and str(err.value).startswith(str(path))
    if in_header:  # cheap corpus scans and streaming see it without decoding
        for check in (audio_info, stream_audio):
            with pytest.raises(AudioError, match=reason):
                check(path)


def test_inf_reason_is_inf_not_nan(tmp_path):
    # soxr smears one Inf into NaNs: the check must come before resampling.
    path = write(tmp_path / "inf.wav", np.stack([sine(48000, 1.0)] * 2, axis=1), 48000, subtype="FLOAT")
    data, _ = sf.read(path)
    data[24000, 1] = -np.inf
    write(path, data, 48000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"^.*: 1 Inf samples, first at 0\.500 s$"):
        load_audio(path)


def test_min_samples_is_checked_after_resampling(tmp_path):
    path = write(tmp_path / "a.wav", sine(48000, 1000 / 48000), 48000)  # 1000 in, 333 out
    with pytest.raises(AudioError, match="too short: 333 samples"):
        load_audio(path)
    assert len(load_audio(path, sample_rate=48000)) == 1000


def test_validate_waveform():
    validate_waveform(sine(SAMPLE_RATE, 0.025), "x")  # exactly one frame is enough
    with pytest.raises(AudioError, match="too short"):
        validate_waveform(sine(SAMPLE_RATE, 0.025)[:-1], "x")


def test_batch_job_keeps_good_files_and_reports_bad_ones(tmp_path):
    good = [write(tmp_path / f"good{i}.wav", sine(22050, 0.5, freq=200 * (i + 1)), 22050) for i in range(3)]
    bad = {case: make(tmp_path) for case, (make, _, _) in BAD.items()}
    loaded, failed = {}, {}
    for path in [good[0], *bad.values(), good[1], good[2]]:
        try:
            loaded[path] = load_audio(path)
        except AudioError as e:  # anything else escaping fails the test
            failed[e.path] = e.reason
    assert list(loaded) == [good[0], good[1], good[2]]
    assert set(failed) == {str(p) for p in bad.values()}


# --- streaming ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """70 s of 44.1 kHz stereo: a sweep-ish tone plus noise, different in each channel."""
    rng = np.random.default_rng(0)
    x = sine(44100, 70.0, freq=440)[:, None] + 0.05 * rng.standard_normal((44100 * 70, 2)).astype(np.float32)
    return write(tmp_path_factory.mktemp("long") / "long.wav", x, 44100)


def test_stream_matches_load(long_file):
    chunks = list(stream_audio(long_file, block_seconds=10.0))
    assert len(chunks) >= 7 and all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    # One block at a time, never the whole file (a chunk may carry the filter's few hundred samples of delay).
    assert max(len(c) for c in chunks) <= 10 * SAMPLE_RATE + 1000
    streamed, whole = np.concatenate(chunks), load_audio(long_file)
    assert abs(len(streamed) - len(whole)) <= 1
    n = min(len(streamed), len(whole))
    # Measured: identical (max difference 0.0, soxr 1.1); 1e-6 leaves room for other builds.
    np.testing.assert_allclose(streamed[:n], whole[:n], rtol=0, atol=1e-6)


def test_stream_same_rate_passes_through(tmp_path):
    path = write(tmp_path / "a.wav", sine(SAMPLE_RATE, 2.0), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(np.concatenate(list(stream_audio(path, block_seconds=0.3))), load_audio(path))


def test_stream_nan_in_the_middle_raises_during_iteration(tmp_path):
    x = sine(44100, 20.0)
    x[44100 * 15] = np.nan
    path = write(tmp_path / "nan.wav", x, 44100, subtype="FLOAT")
    chunks = stream_audio(path, block_seconds=4.0)  # the header is fine: no error yet
    got = []
    with pytest.raises(AudioError, match=r"1 NaN samples, first at 15\.000 s") as err:
        for chunk in chunks:
            got.append(chunk)
    assert err.value.path == str(path) and len(got) == 3  # blocks 0-4, 4-8, 8-12 s; 12-16 s has it


@pytest.mark.skipif(not HAS_MP3, reason="libsndfile without MP3")
def test_stream_truncated_mp3_raises(tmp_path):
    path = _truncated(tmp_path, "MP3")
    with pytest.raises(AudioError, match="truncated"):
        list(stream_audio(path, block_seconds=0.1))
