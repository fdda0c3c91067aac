"""Every encoder family honours one contract: padded batch == one by one, real frame counts."""

import numpy as np
import pytest
import torch

from gmptl.encoders import build_encoder, from_config, random_config
from gmptl.encoders.ct2 import BUILTIN_SHA256, builtin_model_dir, whisper_encoder_from_ct2
from gmptl.errors import EncoderError
from gmptl.masking import span_mask

VARIANTS = ["hubert", "wav2vec2", "wav2vec2-stable", "wavlm", "data2vec-audio", "whisper"]


def tiny(variant: str):
    torch.manual_seed(0)
    if variant == "wav2vec2-stable":  # the large models' layout: layer-norm convs, pre-LN transformer
        config = random_config("wav2vec2")
        config.do_stable_layer_norm, config.feat_extract_norm = True, "layer"
        return from_config(config, "random:wav2vec2-stable")
    return build_encoder(f"random:{variant}-tiny")


def padded_batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    waves = torch.randn(len(lengths), int(lengths.max()), generator=g) * 0.1
    waves = waves * (torch.arange(waves.shape[1])[None] < lengths[:, None])
    return waves, lengths


@pytest.fixture(scope="module")
def builtin():
    return build_encoder("whisper-tiny.en")


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_batch_equals_one_by_one(variant):
    enc = tiny(variant)
    waves, lengths = padded_batch([16000, 9001, 4003, 12345])
    with torch.no_grad():
        batch = enc(waves, lengths)
        assert len(batch.hidden_states) == enc.num_layers + 1
        for i, n in enumerate(lengths.tolist()):
            alone = enc(waves[i:i + 1, :n], lengths[i:i + 1])
            frames = alone.hidden_states[0].shape[1]
            assert int(batch.lengths[i]) == int(alone.lengths[0]) == frames, "frame length = real output length"
            for layer_b, layer_a in zip(batch.hidden_states, alone.hidden_states):
                assert layer_b.shape[-1] == enc.hidden_size
                assert torch.allclose(layer_b[i, :frames], layer_a[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_masked_batch_equals_one_by_one_and_trains_the_mask(variant):
    enc = tiny(variant)
    waves, lengths = padded_batch([8000, 5000], seed=1)
    frames = enc.frame_lengths(lengths)
    mask = span_mask(frames, 0.5, 5, rng=np.random.default_rng(0))
    with torch.no_grad():
        plain = enc(waves, lengths).hidden_states[-1]
        masked = enc(waves, lengths, frame_mask=mask).hidden_states[-1]
        for i, n in enumerate(lengths.tolist()):
            t = int(frames[i])
            alone = enc(waves[i:i + 1, :n], lengths[i:i + 1], frame_mask=mask[i:i + 1, :t]).hidden_states[-1]
            assert torch.allclose(masked[i, :t], alone[0], atol=1e-4, rtol=0)
    assert not torch.allclose(plain, masked, atol=1e-3)
    enc.train()
    enc(waves, lengths, frame_mask=mask).hidden_states[-1].sum().backward()
    assert enc.mask_embedding.grad is not None and enc.mask_embedding.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["hubert", "wav2vec2", "wavlm", "data2vec-audio"])
def test_equals_transformers_forward_on_one_utterance(family):
    enc = tiny(family)
    wave = torch.randn(1, 12000)
    with torch.no_grad():
        ours = enc(wave, torch.tensor([12000])).hidden_states
        x = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7) if enc.normalize else wave
        ref = enc.model(x, output_hidden_states=True).hidden_states
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_whisper_equals_transformers_at_30_seconds():
    enc = tiny("whisper")
    wave = torch.randn(1, enc.max_samples) * 0.1
    with torch.no_grad():
        ours = enc(wave, torch.tensor([enc.max_samples])).hidden_states[-1]
        mel, _ = enc.features(wave, torch.tensor([enc.max_samples]))
        ref = enc.model(mel).last_hidden_state
    assert torch.allclose(ours, ref, atol=1e-5)


def test_freeze_frontend():
    enc = tiny("hubert")
    enc.freeze_frontend()
    frozen = {id(p) for p in enc.frontend_parameters()}
    assert frozen and all(not p.requires_grad for p in enc.frontend_parameters())
    assert all(p.requires_grad for p in enc.parameters() if id(p) not in frozen)
    enc.freeze_frontend(False)
    assert all(p.requires_grad for p in enc.parameters())


@pytest.mark.parametrize("family", ["hubert", "whisper"])
def test_loads_from_a_local_directory(tmp_path, family):
    import transformers

    torch.manual_seed(3)
    config = random_config(family)
    model = transformers.WhisperModel(config) if family == "whisper" else transformers.AutoModel.from_config(config)
    model.save_pretrained(tmp_path)
    enc = build_encoder(str(tmp_path))
    assert enc.name == str(tmp_path) and enc.num_layers == 2
    source = model.encoder if family == "whisper" else model
    ours = {**enc.model.state_dict(), "masked_spec_embed": enc.mask_embedding}  # the mask is ours now
    for name, p in source.state_dict().items():
        assert torch.equal(ours[name], p), name
    waves, lengths = padded_batch([6000])
    with torch.no_grad():
        assert enc(waves, lengths).hidden_states[-1].shape == (1, int(enc.frame_lengths(lengths)[0]), 32)


def test_unreachable_hub_id_fails_clearly(tmp_path):
    with pytest.raises(EncoderError, match="not in the Hugging Face cache.*--local-dir"):
        build_encoder("facebook/hubert-base-ls960-not-cached")
    with pytest.raises(EncoderError, match="no config.json"):
        build_encoder(str(tmp_path))
    with pytest.raises(EncoderError, match="random:<family>-<size>"):
        build_encoder("random:hubert-huge")


def test_whisper_rejects_more_than_30_seconds():
    enc = tiny("whisper")
    with pytest.raises(EncoderError, match="at most 30 s"):
        enc(torch.zeros(1, enc.max_samples + 160), torch.tensor([enc.max_samples + 160]))


def test_builtin_sha256_is_checked(tmp_path):
    data = bytearray((builtin_model_dir() / "model.bin").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "model.bin").write_bytes(bytes(data))
    with pytest.raises(EncoderError, match="sha256"):
        whisper_encoder_from_ct2(tmp_path, BUILTIN_SHA256)


def test_builtin_equals_ctranslate2(builtin, ravdess_root):
    """The converted encoder equals CTranslate2's own Whisper encoder on real speech."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import WhisperFeatureExtractor

    from gmptl.audio import load_audio

    wave = load_audio(ravdess_root / "Actor_01" / "03-01-05-02-01-01-01.flac")
    reference_features = WhisperFeatureExtractor(feature_size=80)(
        wave, sampling_rate=16000, return_tensors="np").input_features.astype(np.float32)  # padded to 30 s
    ct2 = ctranslate2.models.Whisper(str(builtin_model_dir()), device="cpu", compute_type="float32")
    expected = np.array(ct2.encode(ctranslate2.StorageView.from_array(reference_features), to_cpu=True))

    padded = torch.zeros(1, builtin.max_samples)
    padded[0, : len(wave)] = torch.from_numpy(wave)
    with torch.no_grad():
        features, _ = builtin.features(padded, torch.tensor([builtin.max_samples]))
        out = builtin(padded, torch.tensor([builtin.max_samples])).hidden_states[-1].numpy()
    assert np.abs(features.numpy() - reference_features).max() <= 1e-4, "our log-mel is Whisper's"
    assert expected.shape == out.shape == (1, 1500, 384)
    assert np.abs(out - expected).max() <= 1e-3


def test_builtin_batch_equals_one_by_one_on_speech(builtin, ravdess_root):
    from gmptl.audio import load_audio

    waves = [torch.from_numpy(load_audio(p)) for p in sorted((ravdess_root / "Actor_02").glob("*.flac"))[:3]]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    with torch.no_grad():
        out = builtin(batch, lengths)
        for i, w in enumerate(waves):
            alone = builtin(w[None], lengths[i:i + 1])
            t = alone.hidden_states[0].shape[1]
            assert t == int(out.lengths[i])
            # fp32 summation order differs with the batch shape: up to 3e-4 on the top layer (values near 10)
            # on one of this project's CPUs (1e-5 relative); attending to the padding moves them by 1 to 7.
            for a, b in zip(out.hidden_states, alone.hidden_states):
                assert torch.allclose(a[i, :t], b[0], atol=1e-3, rtol=0)


def test_builtin_cache_is_lossless_and_checked(tmp_path, monkeypatch):
    """The cached encoder equals a fresh conversion; a cache of another source is rebuilt."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from gmptl.encoders.ct2 import builtin_encoder

    monkeypatch.setenv("GMPTL_CACHE", str(tmp_path))
    direct = whisper_encoder_from_ct2(builtin_model_dir(), BUILTIN_SHA256).state_dict()
    first = builtin_encoder().state_dict()  # converts and writes the cache
    cache = tmp_path / "whisper-tiny.en.encoder.safetensors"
    assert cache.is_file()
    second = builtin_encoder().state_dict()  # reads the cache
    for name, value in direct.items():
        assert torch.equal(first[name], value) and torch.equal(second[name], value), name

    with safe_open(str(cache), "pt") as f:
        tampered = {k: f.get_tensor(k) for k in f.keys()}
    tampered["layer_norm/gamma"] = torch.zeros_like(tampered["layer_norm/gamma"])
    save_file(tampered, str(cache), metadata={"source_sha256": "0" * 64})
    rebuilt = builtin_encoder().state_dict()
    assert torch.equal(rebuilt["layer_norm.weight"], direct["layer_norm.weight"])
    with safe_open(str(cache), "pt") as f:
        assert f.metadata()["source_sha256"] == BUILTIN_SHA256


@pytest.mark.parametrize("variant", ["hubert", "wavlm", "whisper"])
def test_gradient_checkpointing_gives_the_same_gradients(variant):
    enc = tiny(variant)
    enc.train()
    for m in enc.modules():  # dropout off: the two passes must see the same network
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "dropout", None), float):  # attention dropout is a plain attribute
            m.dropout = 0.0
    waves, lengths = padded_batch([6400, 4800])
    grads = []
    for on in (False, True):
        enc.zero_grad()
        enc.checkpointing = on
        out = enc(waves, lengths).hidden_states
        sum(h.pow(2).mean() for h in out).backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
