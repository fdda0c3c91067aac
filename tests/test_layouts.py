"""The checkpoint layouts users load, shrunk: gmptl reads each saved directory as transformers does.

Every layout keeps the real checkpoint's architecture flags (the ones that change the
computation) and shrinks only depth and widths, so each test runs in seconds on a CPU.
The reference is transformers itself, on the input its own feature extractor prepares.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import transformers

from gmptl.__main__ import main
from gmptl.encoders import build_encoder
from gmptl.errors import EncoderError
from gmptl.modeldir import encoder_description, encoder_from_description
from synth_corpus import make_corpus

REPO = Path(__file__).resolve().parents[1]
SR = 16000

# Every wav2vec2-family checkpoint below: seven convolutions, kernels 10,3,3,3,3,2,2 and strides
# 5,2,2,2,2,2,2 (400-sample receptive field, 320 samples = 20 ms per frame); 512 channels shrunk to 16.
CONVS = dict(conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
# Base models are 768 wide with 12 heads and 12 layers, large ones 1024, 16 and 24: shrunk alike.
BASE = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2)
LARGE = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=3)
# The real positional convolution: kernel 128 (even, so transformers drops its last frame), 16 groups.
POS_CONV = dict(num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
# Base models: post-LN transformer, a group norm after the first convolution only, no conv bias.
# Large models: pre-LN ("stable") transformer, a layer norm after every convolution.
GROUP_POST_LN = dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
LAYER_PRE_LN = dict(feat_extract_norm="layer", do_stable_layer_norm=True)
WAVLM_BIAS = dict(num_buckets=320, max_bucket_distance=800)  # relative position buckets, both WavLM sizes
# data2vec-audio (both sizes): layer-normed convolutions, post-LN, five stacked positional convolutions
# of kernel 19 (data2vec-audio-base's config.json, e.g. as copied into huggingface.co/abdusah/aradia-ctc-data2vec-ft).
DATA2VEC = dict(conv_bias=False, num_conv_pos_embeddings=5, conv_pos_kernel_size=19,
                num_conv_pos_embedding_groups=16, layerdrop=0.1)
QUANTIZER = dict(codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8)  # pre-training heads only

# name: (model class the hub checkpoint holds, its config flags, its preprocessor_config.json).
# Sources: the checkpoints' config.json, read where the hub pages were reachable and otherwise in fine-tunes
# that copy it (their "_name_or_path" names the checkpoint; the architecture flags are inherited unchanged).
# do_normalize: the hub preprocessor where it was read, else the pre-training recipe (fairseq/unilm
# task.normalize). layerdrop is recorded for completeness: eval mode never applies it, nor does gmptl
# unless encoder.layerdrop is set; values not read in a file are marked "assumed".
LAYOUTS = {
    # config.json via huggingface.co/GENG/hubert_ls_2500: conv_bias false, group, post-LN, layerdrop 0.1.
    # Pre-trained on raw waveforms (fairseq hubert_base_librispeech.yaml: normalize false).
    "hubert-base-ls960": (transformers.HubertModel, {**BASE, **POS_CONV, **GROUP_POST_LN, "layerdrop": 0.1},
                          dict(do_normalize=False, return_attention_mask=False)),
    # via huggingface.co/superb/hubert-large-superb-er: conv_bias true, layer, pre-LN, layerdrop 0.1;
    # pre-trained on normalised waveforms (fairseq hubert_large_librilight.yaml: normalize true).
    "hubert-large-ll60k": (transformers.HubertModel, {**LARGE, **POS_CONV, **LAYER_PRE_LN, "conv_bias": True,
                                                      "layerdrop": 0.1},
                           dict(do_normalize=True, return_attention_mask=True)),
    # Held with its pre-training heads (architectures: Wav2Vec2ForPreTraining). group, post-LN, no conv bias
    # (layerdrop 0.1 assumed). Its preprocessor says do_normalize true, return_attention_mask false (as in
    # huggingface.co/patrickvonplaten/wav2vec2-base-100h-with-lm), though fairseq pre-trained it on raw waveforms.
    "wav2vec2-base": (transformers.Wav2Vec2ForPreTraining, {**BASE, **POS_CONV, **GROUP_POST_LN, **QUANTIZER,
                                                            "layerdrop": 0.1},
                      dict(do_normalize=True, return_attention_mask=False)),
    # via huggingface.co/superb/wav2vec2-large-superb-er: conv_bias true, layer, pre-LN (layerdrop 0.1 assumed).
    "wav2vec2-large-lv60": (transformers.Wav2Vec2ForPreTraining, {**LARGE, **POS_CONV, **LAYER_PRE_LN, **QUANTIZER,
                                                                  "conv_bias": True, "layerdrop": 0.1},
                            dict(do_normalize=True, return_attention_mask=True)),
    # huggingface.co/Xenova/wavlm-base-plus (microsoft's, copied): conv_bias false, group, post-LN (layerdrop
    # 0.05 assumed). Preprocessor: raw waveforms with an attention mask (unilm's WavLM Base+ recipe).
    "wavlm-base-plus": (transformers.WavLMModel, {**BASE, **POS_CONV, **GROUP_POST_LN, **WAVLM_BIAS,
                                                  "layerdrop": 0.05},
                        dict(do_normalize=False, return_attention_mask=True)),
    # huggingface.co/microsoft/wavlm-large config.json: conv_bias false, layer, pre-LN, layerdrop 0.1.
    "wavlm-large": (transformers.WavLMModel, {**LARGE, **POS_CONV, **LAYER_PRE_LN, **WAVLM_BIAS, "conv_bias": False,
                                              "layerdrop": 0.1},
                    dict(do_normalize=True, return_attention_mask=True)),
    # Both sizes share their flags (DATA2VEC); the large one's are assumed the same as the base one's.
    "data2vec-audio-base": (transformers.Data2VecAudioModel, {**BASE, **DATA2VEC},
                            dict(do_normalize=True, return_attention_mask=True)),
    "data2vec-audio-large": (transformers.Data2VecAudioModel, {**LARGE, **DATA2VEC},
                             dict(do_normalize=True, return_attention_mask=True)),
}

# openai/whisper-base and whisper-small config.json widths (d_model, heads, FFN) at two layers of their 6 and
# 12; both take 80 mel bins (large-v3 takes 128). The decoder is shrunk: gmptl drops it on load.
WHISPER = {
    "whisper-base": dict(d_model=512, encoder_attention_heads=8, encoder_ffn_dim=2048, decoder_attention_heads=8),
    "whisper-small": dict(d_model=768, encoder_attention_heads=12, encoder_ffn_dim=3072, decoder_attention_heads=12),
}
WHISPER_COMMON = dict(num_mel_bins=80, encoder_layers=2, decoder_layers=1, decoder_ffn_dim=64, vocab_size=64,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)


def save_layout(name: str, directory: Path):
    """Layout ``name`` with random weights, saved as a hub snapshot is laid out (weights, config.json,
    preprocessor_config.json written by the matching feature extractor); returns its transformers
    encoder in eval mode: the reference."""
    torch.manual_seed(0)
    if name in WHISPER:
        model = transformers.WhisperModel(transformers.WhisperConfig(**WHISPER[name], **WHISPER_COMMON))
        transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(directory)
        reference = model.get_encoder()
    else:
        model_class, flags, preprocessor = LAYOUTS[name]
        model = model_class(model_class.config_class(**CONVS, **flags))
        transformers.Wav2Vec2FeatureExtractor(**preprocessor).save_pretrained(directory)
        reference = getattr(model, "wav2vec2", model)  # the encoder inside Wav2Vec2ForPreTraining
    model.save_pretrained(directory)
    if name not in WHISPER:
        as_converted_in_2021(directory)
    return reference.eval()


def as_converted_in_2021(directory: Path) -> None:
    """Weights as these checkpoints' hub files hold them: ``pytorch_model.bin``, with the positional
    convolution's weight norm under the names of ``torch.nn.utils.weight_norm`` (``weight_g``, ``weight_v``)."""
    from safetensors.torch import load_file

    names = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    weights = {}
    for key, value in load_file(str(directory / "model.safetensors")).items():
        for new, old in names.items():
            key = key.replace(new, old)
        weights[key] = value
    torch.save(weights, directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``checkpoint(name)`` -> (directory, transformers reference) of a layout, saved once per module."""
    made = {}

    def get(name: str):
        if name not in made:
            directory = tmp_path_factory.mktemp(name)
            made[name] = str(directory), save_layout(name, directory)
        return made[name]
    return get


def waveform(samples: int, seed: int = 0) -> torch.Tensor:
    """(samples,) noise off zero mean and unit variance, so that normalising it matters."""
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(samples, generator=g) + 0.05


def padded(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    waves = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        waves[i, :n] = waveform(n, seed=i + 1)
    return waves, torch.tensor(lengths)


def transformers_states(directory: str, reference, wave: torch.Tensor, do_normalize: bool | None = None):
    """(hidden_states, last_hidden_state) of transformers on ``wave`` as its saved feature extractor prepares it
    (``do_normalize`` overrides the preprocessor's)."""
    extractor = transformers.AutoFeatureExtractor.from_pretrained(directory)
    if do_normalize is not None:
        extractor.do_normalize = do_normalize
    inputs = extractor(wave.numpy(), sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        out = reference(inputs.get("input_values", inputs.get("input_features")), output_hidden_states=True)
    return out.hidden_states, out.last_hidden_state


def assert_same_states(ours: list[torch.Tensor], hidden, last, atol: float = 1e-4):
    """gmptl's states against transformers': the last one after the final layer norm, as ``last_hidden_state``
    (transformers 5 takes ``hidden_states[-1]`` before it in pre-LN models)."""
    assert len(ours) == len(hidden)
    for i, (a, b) in enumerate(zip(ours[:-1], hidden[:-1])):
        assert a.shape == b.shape and (a - b).abs().max() <= atol, f"hidden state {i}"
    assert ours[-1].shape == last.shape and (ours[-1] - last).abs().max() <= atol, "last hidden state"


def assert_batch_equals_one_by_one(encoder, lengths: list[int], atol: float = 1e-4):
    waves, lengths = padded(lengths)
    with torch.no_grad():
        batch = encoder(waves, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = encoder(waves[i:i + 1, :n], lengths[i:i + 1])
            t = alone.hidden_states[0].shape[1]
            assert int(batch.lengths[i]) == t
            for layer, (a, b) in enumerate(zip(batch.hidden_states, alone.hidden_states)):
                assert (a[i, :t] - b[0]).abs().max() <= atol, f"row {i}, hidden state {layer}"


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_reads_like_transformers(name, checkpoint):
    directory, reference = checkpoint(name)
    encoder = build_encoder(directory)
    assert encoder.normalize == LAYOUTS[name][2]["do_normalize"], "normalize follows the preprocessor"
    wave = waveform(SR + 123)
    with torch.no_grad():
        ours = encoder(wave[None], torch.tensor([len(wave)]))
    assert_same_states(ours.hidden_states, *transformers_states(directory, reference, wave))


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_batch_equals_one_by_one(name, checkpoint):
    assert_batch_equals_one_by_one(build_encoder(checkpoint(name)[0]), [SR, 9001, 4003])


@pytest.mark.parametrize("name", WHISPER)
def test_whisper_layout_reads_like_transformers_at_30_seconds(name, checkpoint):
    directory, reference = checkpoint(name)
    encoder = build_encoder(directory)
    wave = waveform(encoder.max_samples)
    with torch.no_grad():
        ours = encoder(wave[None], torch.tensor([len(wave)]))
    assert_same_states(ours.hidden_states, *transformers_states(directory, reference, wave))


@pytest.mark.parametrize("name", WHISPER)
def test_whisper_layout_batch_equals_one_by_one(name, checkpoint):
    assert_batch_equals_one_by_one(build_encoder(checkpoint(name)[0]), [3 * SR, 27_000, 9001])


@pytest.mark.parametrize("name,normalize", [("hubert-large-ll60k", False), ("hubert-base-ls960", True)])
def test_normalize_overrides_the_preprocessor(name, normalize, checkpoint):
    """normalize=false on a checkpoint whose preprocessor normalises gives transformers' output on the raw
    waveform; normalize=true on one that does not, its output on the normalised waveform."""
    directory, reference = checkpoint(name)
    assert LAYOUTS[name][2]["do_normalize"] is not normalize
    encoder = build_encoder(directory, normalize=normalize)
    wave = waveform(SR)
    with torch.no_grad():
        ours = encoder(wave[None], torch.tensor([len(wave)])).hidden_states
    assert_same_states(ours, *transformers_states(directory, reference, wave, do_normalize=normalize))
    # The other input gives another output: the check above tells the two apart.
    _, other = transformers_states(directory, reference, wave, do_normalize=not normalize)
    assert (ours[-1] - other).abs().max() > 1e-3


def test_a_model_directory_keeps_the_normalisation_training_used(checkpoint):
    encoder = build_encoder(checkpoint("hubert-large-ll60k")[0], normalize=False)
    description = json.loads(json.dumps(encoder_description(encoder)))  # as config.json holds it
    assert description["normalize"] is False
    rebuilt = encoder_from_description(description)
    rebuilt.load_state_dict(encoder.state_dict())
    wave = waveform(8000)
    with torch.no_grad():
        a, b = (e.eval()(wave[None], torch.tensor([8000])).hidden_states[-1] for e in (encoder, rebuilt))
    assert not rebuilt.normalize and torch.equal(a, b)


def test_whisper_refuses_waveform_normalisation(checkpoint):
    directory, _ = checkpoint("whisper-base")
    for spec in (directory, "random:whisper-tiny"):
        with pytest.raises(EncoderError, match="normalize=true does not apply to Whisper") as e:
            build_encoder(spec, normalize=True)
        assert "\n" not in str(e.value)
        build_encoder(spec, normalize=False)  # as auto: the raw waveform's log-mel


def skipped_layers(encoder, passes: int, samples: int = 3200) -> list[list[int]]:
    """The transformer layers each of ``passes`` forward passes skipped; a skipped layer's state must be its input."""
    model = encoder.model
    layers = model.layers if hasattr(model, "layers") else model.encoder.layers  # Whisper | wav2vec2 family
    ran = []
    hooks = [layer.register_forward_hook(lambda *_, k=k: ran.append(k)) for k, layer in enumerate(layers)]
    wave, skipped = waveform(samples)[None], []
    try:
        with torch.no_grad():
            for _ in range(passes):
                ran.clear()
                states = encoder(wave, torch.tensor([samples])).hidden_states
                skipped.append(sorted(set(range(len(layers))) - set(ran)))
                for k in skipped[-1]:
                    if k + 1 < len(layers):  # the top state is after the final norm in some models
                        assert torch.equal(states[k + 1], states[k]), f"skipped layer {k} passes its input through"
    finally:
        for hook in hooks:
            hook.remove()
    return skipped


@pytest.mark.parametrize("spec", ["random:hubert-tiny", "random:wavlm-tiny", "random:whisper-tiny"])
def test_layerdrop_skips_layers_at_its_rate_in_training_only(spec):
    rate, passes = 0.3, 300
    encoder = build_encoder(spec, layerdrop=rate).train()
    # WavLM's first layer always runs (as in transformers): it computes the position bias the others reuse.
    droppable = set(range(1 if "wavlm" in spec else 0, encoder.num_layers))
    torch.manual_seed(0)
    skipped = skipped_layers(encoder, passes)
    assert all(set(s) <= droppable for s in skipped)
    n, k = passes * len(droppable), sum(map(len, skipped))
    assert abs(k - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate)), f"{k} of {n} skipped at rate {rate}"
    torch.manual_seed(0)
    assert skipped_layers(encoder, passes) == skipped, "torch's global seed fixes the draws"

    encoder.eval()
    rng = torch.get_rng_state()
    assert not any(skipped_layers(encoder, 50)), "eval mode never skips"
    assert torch.equal(torch.get_rng_state(), rng), "nor draws"
    encoder.train().layerdrop = 0.0
    assert not any(skipped_layers(encoder, 50)), "rate 0 never skips"


@pytest.mark.slow
def test_cv_end_to_end_with_a_hub_layout_directory(checkpoint, tmp_path):
    """`gmptl cv`, every GMP-TL stage on two folds, with a hubert-base-ls960-layout directory as encoder.spec."""
    directory, _ = checkpoint("hubert-base-ls960")
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    assert main(["cv", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"data.root={corpus}",
                 "--set", f"encoder.spec={directory}", "--set", "encoder.layerdrop=0.2", "--out", str(out)]) == 0
    assert 0 <= json.loads((out / "summary.json").read_text())["uar_mean"] <= 100
    for fold in (1, 2):
        meta = json.loads((out / f"fold{fold}" / "model" / "config.json").read_text())
        assert meta["encoder"]["name"] == directory and meta["encoder"]["hidden_size"] == 32
        assert meta["encoder"]["normalize"] is False, "as the checkpoint's preprocessor says"
        assert meta["config"]["encoder"]["layerdrop"] == 0.2
