"""Tiny corpora in the exact on-disk layouts the adapters read, written with numpy + soundfile."""

from pathlib import Path

import numpy as np
import soundfile as sf

SECONDS = 0.05  # short files keep every fixture under a second to write


def write_audio(path: Path, rate: int = 16000, seconds: float = SECONDS) -> Path:
    """A quiet sine of ``seconds`` at ``rate``; the format follows the suffix (.wav, .flac)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * rate)) / rate
    sf.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), rate, subtype="PCM_16")
    return path


# IEMOCAP: one EmoEvaluation file per dialog, as in the release (header, then a block per turn).
IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
IEMOCAP_EVALUATORS = ("C-E2:\tNeutral;\t()\nC-E4:\tFrustration; Anger;\t()\nC-F1:\tNeutral;\t(curious)\n"
                      "A-E3:\tval 3; act 2; dom  2;\t()\nA-F1:\tval 3; act 2; dom  1;\t()\n")
IEMOCAP_CODES = ("neu", "hap", "exc", "ang", "sad", "fru", "xxx")


def make_iemocap(root: Path, sessions=(1, 2), codes=IEMOCAP_CODES) -> dict[str, str]:
    """Per session an improvisation (``SesNNF_impro01``) and a script (``SesNNM_script01_1``), each
    with one turn of the woman and one of the man per code. Returns utterance id -> code."""
    labels = {}
    for s in sessions:
        ses = f"Ses{s:02d}"
        for dialog in (f"{ses}F_impro01", f"{ses}M_script01_1"):
            blocks = []
            for i, code in enumerate(codes):
                for speaker in "FM":
                    uid = f"{dialog}_{speaker}{i:03d}"
                    start = 2.0 * len(blocks) + 0.29
                    blocks.append(f"[{start:.4f} - {start + 1.9456:.4f}]\t{uid}\t{code}\t"
                                  f"[2.5000, 3.0000, 2.5000]\n{IEMOCAP_EVALUATORS}")
                    write_audio(root / f"Session{s}" / "sentences" / "wav" / dialog / f"{uid}.wav")
                    labels[uid] = code
            evaluation = root / f"Session{s}" / "dialog" / "EmoEvaluation"
            (evaluation / "Categorical").mkdir(parents=True, exist_ok=True)
            (evaluation / f"{dialog}.txt").write_text(IEMOCAP_HEADER + "\n".join(blocks) + "\n")
            # Per-evaluator files sit in subfolders; their lines must not be read as labels.
            (evaluation / "Categorical" / f"{dialog}_e2_cat.txt").write_text(
                "".join(f"{uid} :Neutral state; ()\n" for uid in labels if uid.startswith(dialog)))
    return labels


def make_ravdess(root: Path, suffix: str = ".flac", rate: int = 16000, actors=range(1, 25)) -> Path:
    """One statement per emotion per actor: ``Actor_XX/03-01-EE-01-01-01-XX<suffix>``."""
    for actor in actors:
        for emotion in range(1, 9):
            write_audio(root / f"Actor_{actor:02d}" / f"03-01-{emotion:02d}-01-01-01-{actor:02d}{suffix}", rate)
    return root


EMODB_SPEAKERS = ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")


def make_emodb(root: Path) -> Path:
    """Each speaker says text a01 once in each of the 7 emotions: ``wav/03a01Fa.wav``."""
    for speaker in EMODB_SPEAKERS:
        for letter in "WLEAFTN":
            write_audio(root / "wav" / f"{speaker}a01{letter}a.wav")
    return root


CREMAD_SEXES = {"1001": "Male", "1002": "Male", "1003": "Male", "1004": "Female", "1005": "Male",
                "1006": "Female", "1007": "Female", "1008": "Male", "1009": "Male", "1010": "Female"}


def make_cremad(root: Path, demographics: bool = True) -> Path:
    """``AudioWAV/1001_DFA_ANG_XX.wav``: each actor, one sentence, the 6 emotions; the actors' csv."""
    for actor in CREMAD_SEXES:
        for emotion in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"):
            write_audio(root / "AudioWAV" / f"{actor}_DFA_{emotion}_XX.wav")
    if demographics:
        rows = [f"{a},{30 + i},{sex},Caucasian,Not Hispanic" for i, (a, sex) in enumerate(CREMAD_SEXES.items())]
        (root / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n" + "\n".join(rows) + "\n")
    return root
