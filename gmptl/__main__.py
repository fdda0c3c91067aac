"""The ``gmptl`` command line: one entry point, a subcommand per thing a user wants to do."""

import argparse
import csv
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from .config import DataConfig
from .errors import GmptlError


def fatal(message: str, code: int = 2) -> None:
    """Print one clear line and leave (the traceback only with --verbose)."""
    print(f"gmptl: error: {message}", file=sys.stderr)
    sys.exit(code)


def fold_numbers(args) -> list[int] | None:
    """``--folds 1,3`` as numbers; None (every fold) when not given."""
    try:
        return [int(f) for f in args.folds.split(",")] if args.folds else None
    except ValueError:
        raise GmptlError(f"--folds {args.folds}: give fold numbers, e.g. 1,3") from None


def given(args, *names: str) -> list[str]:
    """``--name value`` for each of ``names`` the user gave (once per value of a repeated option, a flag alone):
    what a recorded command needs to rerun the same run."""
    words = []
    for name in names:
        flag, value = "--" + name.replace("_", "-"), getattr(args, name)
        if isinstance(value, bool):
            words += [flag] if value else []
        elif value is not None:
            words += [w for v in (value if isinstance(value, list) else [value]) for w in (flag, str(v))]
    return words


def cmd_data(args) -> int:
    from .corpora import load_corpus, summarize

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if args.crop <= 0:
        fatal(f"--crop must be positive seconds, got {args.crop}")
    # Shown whatever its speakers; training refuses a manifest without them unless told (data.speaker_dependent).
    summary = summarize(load_corpus(args.corpus, args.root, classes=classes, speaker_dependent=True), crop=args.crop)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['corpus']} at {summary['root']}")
    print(f"  {summary['utterances']} utterances, {summary['seconds'] / 3600:.2f} h, "
          f"{summary['speakers']} speakers ({summary['protocol']} folds)")
    d, crop = summary["durations"], summary["crop"]
    print(f"  durations: median {d['median']:.2f} s (10-90 %: {d['p10']:.2f}-{d['p90']:.2f} s, "
          f"range {d['min']:.2f}-{d['max']:.2f} s)")
    print(f"  a {crop['seconds']:g} s training crop (data.max_seconds) shortens {100 * crop['utterances_cut']:.1f} % "
          f"of the utterances and leaves out {100 * crop['audio_cut']:.1f} % of the audio")
    print("  classes: " + ", ".join(f"{k} {v}" for k, v in summary["classes"].items()))
    print("  genders: " + ", ".join(f"{k} {v}" for k, v in summary["genders"].items()))
    for fold in summary["folds"]:
        print(f"  fold {fold['fold']}: test speakers {', '.join(fold['test_speakers'])} "
              f"({fold['test_utterances']} utterances)")
    if summary.get("dropped"):
        print("  left out (outside the label set): " + ", ".join(f"{k} {v}" for k, v in summary["dropped"].items()))
    for warning in summary.get("warnings", []):
        print(f"  warning: {warning}")
    if summary["problems"]:
        print(f"  {len(summary['problems'])} problem(s):")
        for p in summary["problems"]:
            print(f"    {p['path']}: {p['reason']}")
    return 0


def cmd_encoders(args) -> int:
    from .encoders import available_encoders

    rows = available_encoders()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["spec"]) for r in rows)
    for r in rows:
        mark = "yes" if r["available"] else "no "
        print(f"{r['spec']:<{width}}  {mark}  {r['family']:<14}  {r['note'] or r['source']}")
    print("\nAny other HuBERT / wav2vec2 / WavLM / data2vec-audio / Whisper checkpoint works by hub id "
          "(online) or local directory.")
    return 0


def cmd_cv(args) -> int:
    from .config import load_config
    from .cv import format_table, run_cv

    out = Path(args.out or Path("runs") / Path(args.config).stem)
    summary = run_cv(load_config(args.config, args.set or []), out, fold_numbers(args))
    print(f"{summary['system']} on {summary['corpus']} ({summary['encoder']}), {len(summary['folds'])} fold(s):")
    print(format_table(summary))
    figures = f", reliability diagram: {out / 'reliability.png'}" if summary["calibration"] else ""
    print(f"results: {out / 'summary.json'}, confusion matrix: {out / 'confusion.png'}{figures}")
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import format_tables, reproduce

    out = Path(args.out or f"runs/reproduce-{args.recipe}")
    results = Path(args.results or f"results/{args.recipe}")
    names = args.systems.split(",") if args.systems else None
    command = shlex.join(["gmptl", "reproduce", args.recipe, "--root", args.root]
                         + given(args, "config", "set", "folds", "out", "results"))
    written = reproduce(args.recipe, args.root, out, results, names, fold_numbers(args), args.jobs, args.set or [],
                        args.config, report=not args.no_report, command=command, run=not args.report_only)
    for summary in written.values():
        if summary:
            print(f"{summary['corpus']}, {len(summary['classes'])} classes:\n{format_tables(summary)}")
    if written:
        print(f"results: {results}/ (summary.json, README.md, plots); runs: {out}/")
    return 0


def cmd_sweep(args) -> int:
    from .sweep import format_sweep, sweep

    out = Path(args.out or f"runs/sweep-{Path(args.config).stem}")
    command = shlex.join(["gmptl", "sweep", "--config", args.config]
                         + given(args, "set", "grid", "one_at_a_time", "seeds", "folds") + ["--out", str(out)])
    summary = sweep(args.config, args.set or [], args.grid, out, fold_numbers(args), args.jobs, command,
                    run=not args.report_only, report=not args.no_report, single=args.one_at_a_time,
                    seeds=1 if args.seeds is None else args.seeds)
    if summary:
        print(format_sweep(summary))
        print(f"results: {out / 'sweep.json'}")
    return 0


def cmd_compare(args) -> int:
    from .cv import compare_runs, format_comparison
    from .provenance import provenance

    if args.vs is None and len(args.runs) != 2:
        given_runs = f"{len(args.runs)} run director{'y' if len(args.runs) == 1 else 'ies'} given"
        raise GmptlError(f"compare: {given_runs}; give two (A B), or A... --vs B... for replicate runs of each system")
    a, b = (args.runs, args.vs) if args.vs is not None else (args.runs[:1], args.runs[1:])
    result = compare_runs(a, b, rounds=args.rounds)
    if args.json:
        words = [*a, "--vs", *b] if args.vs is not None else [*a, *b]
        command = shlex.join(["gmptl", "compare", *words, "--rounds", str(args.rounds), "--json"])
        print(json.dumps({**result, "command": command, **provenance()}, indent=2))
    else:
        print(format_comparison(result))
    return 0


def cmd_train(args) -> int:
    from .config import load_config
    from .corpora import configured_corpus, validation_split
    from .cv import claim_run_dir
    from .pipeline import run_fold, run_split

    cfg = load_config(args.config, args.set or [])
    out = Path(args.out)
    claim_run_dir(cfg, out)
    corpus = configured_corpus(cfg.data)
    if args.fold is not None:
        result = run_fold(cfg, corpus, args.fold, out)
    else:
        train, valid = validation_split(corpus.utterances, cfg.data.valid_fraction, seed=cfg.train.seed)
        result = run_split(cfg, corpus.labels, train, valid, [], out,
                           {"fold": None, "test_speakers": [], "protocol": corpus.protocol})
    test = f"  (fold {args.fold} test: WAR {result['war']:.2f}, UAR {result['uar']:.2f})" if "uar" in result else ""
    print(f"model: {out / 'model'}{test}")
    return 0


def write_rows(rows: list[dict], path: Path) -> None:
    """``rows`` as JSONL when ``path`` ends in .jsonl, else as CSV (``cmd_predict`` has checked the suffix)."""
    if path.suffix.lower() == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return
    flat = [{k: v for k, v in r.items() if k != "probabilities"}
            | {f"p_{label}": p for label, p in r["probabilities"].items()} for r in rows]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]) if flat else ["path"])
        writer.writeheader()
        writer.writerows(flat)


def write_track(track, path: Path) -> None:
    """One CSV row per frame: its start time and its pseudo-label at every scale."""
    scales = sorted(track[0].labels) if track else []
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["time"] + [f"km{k}" for k in scales])
        for piece in track:
            for i, row in enumerate(zip(*(piece.labels[k] for k in scales))):
                writer.writerow([round(piece.start + i * piece.frame_seconds, 3), *map(int, row)])


def load_recognizer(args):
    from .inference import load

    if args.precision != "fp32" and args.backend != "torch":
        raise GmptlError(f"--precision {args.precision} needs --backend torch")
    return load(args.model, backend=args.backend, precision=args.precision, calibrate=not args.no_calibrate)


def cmd_predict(args) -> int:
    from .errors import AudioError
    from .inference import expand_paths

    out = Path(args.out) if args.out else None
    if out and out.suffix.lower() not in (".csv", ".jsonl"):
        raise GmptlError(f"--out {out}: use a .csv or .jsonl file")
    recognizer = load_recognizer(args)
    files, failed = expand_paths(args.paths)
    for line in failed:
        print(f"gmptl: error: {line}", file=sys.stderr)
    if args.timeline:
        return predict_timeline(args, recognizer, files, out)

    rows = []
    for result in recognizer.predict_files(files, args.batch_size):
        if isinstance(result, AudioError):  # a bad file is reported and the others go on
            failed.append(str(result))
            print(f"gmptl: error: {result}", file=sys.stderr)
            continue
        rows.append(result.to_dict())
        if not out:
            gender = f"  {result.gender} {result.gender_probability:.2f}" if result.gender else ""
            print(f"{result.path}  {result.label:<10} {result.probabilities[result.label]:.2f}  "
                  f"{result.duration:7.2f} s{gender}")
    if out:
        write_rows(rows, out)
        print(f"{len(rows)} prediction(s) in {out}")
    if failed:
        print(f"gmptl: {len(failed)} input(s) failed, {len(rows)} predicted", file=sys.stderr)
        return 1
    return 0


def predict_timeline(args, recognizer, files: list[Path], out: Path | None) -> int:
    """``gmptl predict --timeline``: one recording's windows as a table, CSV or JSONL, its plot and track."""
    from .inference import plot_timeline, timeline_with_track

    if len(files) != 1:
        raise GmptlError(f"--timeline takes one recording, got {len(files)}")
    if args.track and not recognizer.has_pseudo_labels:
        raise GmptlError(f"--track: {args.model} has no pseudo-label encoder and centroids (a GMP-TL model "
                         "directory has them; an ONNX export does not)")
    marks = read_marks(args.marks) if args.marks else ()  # read first: a bad file fails before the work
    windows, track = timeline_with_track(recognizer, files[0], args.window, args.hop, args.batch_size,
                                         track=bool(args.plot or args.track))
    if args.track:
        write_track(track, Path(args.track))
        print(f"pseudo-label track: {args.track}")
    if out:
        write_rows([w.to_dict() for w in windows], out)
        print(f"{len(windows)} window(s) in {out}")
    else:
        for w in windows:
            print(f"{w.start:9.2f} {w.end:9.2f}  {w.label:<10} {w.probabilities[w.label]:.2f}")
    if args.plot:
        plot_timeline(windows, recognizer.labels, args.plot, f"{files[0].name}: emotion over time", track, marks)
        print(f"plot: {args.plot}")
    return 0


def read_marks(path) -> list[tuple[float, float, str]]:
    """(start, end, label) rows of a CSV with those columns (seconds): known segments to shade on a timeline."""
    import csv

    try:
        with open(path, newline="") as f:
            return [(float(r["start"]), float(r["end"]), r["label"]) for r in csv.DictReader(f)]
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise GmptlError(f"--marks {path}: not a CSV of start,end,label in seconds ({type(e).__name__}: {e})") from None


def cmd_config(args) -> int:
    from .config import load_config, options_table

    if args.list:
        print(options_table(markdown=args.markdown), end="")
        return 0
    import yaml

    print(yaml.safe_dump(load_config(args.config, args.set or []).to_dict(), sort_keys=False), end="")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    renames = [m.strip() for m in args.map.split(",")] if args.map else []
    out = Path(args.out or f"runs/evaluate-{args.corpus}")
    r = evaluate(args.model, args.corpus, args.root, out, args.fold, renames, args.batch_size)
    print(f"{args.model} on {r['corpus']}" + (f" fold {args.fold}" if args.fold is not None else "") + ", labels "
          + ", ".join(f"{k}->{v}" if k != v else k for k, v in r["map"].items())
          + (f"; left out: {', '.join(f'{k} {n}' for k, n in r['left_out'].items())}" if r["left_out"] else ""))
    print(f"WAR {r['war']:.2f}  UAR {r['uar']:.2f}  F1 {r['f1']:.2f}  ({r['n']} utterances); recall: "
          + ", ".join(f"{k} {v:.1f}" for k, v in r["recall"].items()))
    print(f"results: {out / 'result.json'}, predictions: {out / 'predictions.jsonl'}")
    return 0


def cmd_export(args) -> int:
    from .export import export_onnx

    target = Path(args.onnx) if args.onnx else Path(args.model) / "model.onnx"
    if target.suffix.lower() != ".onnx":
        raise GmptlError(f"--onnx {target}: the file name must end in .onnx")
    print(f"ONNX model: {export_onnx(args.model, target)}")
    return 0


def cmd_serve(args) -> int:
    from .service import check_access, serve

    if args.max_upload_mb <= 0:
        raise GmptlError(f"--max-upload-mb {args.max_upload_mb}: must be positive")
    token = args.token or os.environ.get("GMPTL_TOKEN") or None
    check_access(args.host, token, args.insecure)  # before the model loads: a refusal is immediate
    if args.max_audio_seconds <= 0:
        raise GmptlError(f"--max-audio-seconds {args.max_audio_seconds}: must be positive")
    if args.max_inflight_seconds <= 0:
        raise GmptlError(f"--max-inflight-seconds {args.max_inflight_seconds}: must be positive")
    serve(load_recognizer(args), args.host, args.port, int(args.max_upload_mb * 1e6), token, args.insecure,
          args.max_audio_seconds, args.max_inflight_seconds)
    return 0


def cmd_download(args) -> int:
    from .download import download

    root = download(args.corpus, args.dest, url=args.url, md5=args.md5)
    print(f"{args.corpus} is in {root}; see it with: gmptl data --corpus {args.corpus} --root {root}")
    return 0


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gmptl", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = command(sub, "data", cmd_data, help="show what a corpus directory or manifest holds, and its folds")
    p.add_argument("--corpus", required=True, help="iemocap, ravdess, emodb, cremad or manifest")
    p.add_argument("--root", required=True, help="the corpus directory (a CSV/JSONL file for 'manifest')")
    p.add_argument("--classes", help="comma-separated label subset, in this order (e.g. neutral,happy,sad,angry)")
    crop = DataConfig.max_seconds
    p.add_argument("--crop", type=float, default=crop,
                   help=f"training crop in seconds to assess (data.max_seconds; default {crop:g})")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    add_training_commands(sub)
    add_model_commands(sub)
    p = command(sub, "download", cmd_download, help="fetch a public corpus (RAVDESS), check it, unpack it; resumable")
    p.add_argument("corpus", choices=("ravdess",), help="the corpus")
    p.add_argument("--dest", required=True, help="directory to download and unpack into")
    p.add_argument("--url", help="another address (a mirror) for the same archive")
    p.add_argument("--md5", help="expected md5 of the archive (default: the published one)")

    p = command(sub, "encoders", cmd_encoders, help="list the speech encoders available here and how to get the others")
    p.add_argument("--json", action="store_true", help="print a JSON list")

    p = command(sub, "config", cmd_config, help="every config option with its default and meaning, or a resolved config")
    p.add_argument("--list", action="store_true", help="every option, its default and what it does")
    p.add_argument("--markdown", action="store_true", help="with --list: as a Markdown table")
    p.add_argument("--config", help="YAML config to resolve (default: the defaults)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    return parser


def command(sub, name: str, func, **kwargs) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, which ``func(args)`` runs."""
    p = sub.add_parser(name, **kwargs)
    p.set_defaults(func=func)
    return p


def add_training_commands(sub) -> None:
    """cv, reproduce, sweep, compare, train."""
    p = command(sub, "cv", cmd_cv, help="cross-validate a system (GMP-TL by default) fold by fold, resumable")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.lr=3e-4")
    p.add_argument("--folds", help="comma-separated fold numbers (default: all)")
    p.add_argument("--out", help="run directory (default: runs/<config name>); rerun to resume")

    p = command(sub, "reproduce", cmd_reproduce,
                help="the paper's comparison and ablations on a corpus, every fold, resumable")
    p.add_argument("recipe", choices=("ravdess",), help="the benchmark (RAVDESS, 8 classes and the 4-class subset)")
    p.add_argument("--root", required=True, help="the corpus directory")
    p.add_argument("--out", help="run directory (default runs/reproduce-RECIPE); rerun to resume")
    p.add_argument("--results", help="where summary.json, README.md and plots go (default results/RECIPE)")
    p.add_argument("--systems", help="comma-separated subset of the systems (default: all)")
    p.add_argument("--folds", help="comma-separated fold numbers (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes, folds dealt out among them (GPU: 6)")
    p.add_argument("--config", help="another base config than the recipe's")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value for every system")
    p.add_argument("--report-only", action="store_true", help="write the results of the folds finished so far, run nothing")
    p.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)

    p = command(sub, "sweep", cmd_sweep, help="settings chosen on validation speakers: a grid of configs on every fold")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value in every config")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                   help="a setting and its values (repeat for more settings: every combination runs)")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="run the base config and each --grid value changed alone, not every combination")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="run every config N times (train.seed s, s+1, ...; the first in OUT/<config>, the others "
                        "in OUT/<config>@seed<s>) and choose and compare on the means over them (default 1)")
    p.add_argument("--folds", help="comma-separated fold numbers (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes, folds dealt out among them (GPU: 6)")
    p.add_argument("--out", help="run directory (default runs/sweep-<config name>); rerun to resume")
    p.add_argument("--report-only", action="store_true", help="write sweep.json from the folds finished so far")
    p.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)

    p = command(sub, "compare", cmd_compare, help="is run A better than run B? paired test over the test speakers",
                description="gmptl compare A B: paired difference of two runs over their test speakers. "
                            "gmptl compare A1 A2 ... --vs B1 B2 ...: each side the mean of its replicate "
                            "runs (seeds, reruns; the counts may differ).")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories (gmptl cv --out, or one system or sweep config directory): A and B, "
                        "or A's replicates when --vs is given")
    p.add_argument("--vs", nargs="+", metavar="RUN", help="B's replicate runs, tested on the same folds")
    p.add_argument("--rounds", type=int, default=10000, help="bootstrap and permutation rounds (default 10000)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command(sub, "train", cmd_train, help="train a system on a whole corpus (or one fold) into a model directory")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--fold", type=int, help="train on this fold's training speakers and test on its own")
    p.add_argument("--out", required=True, help="run directory; the model lands in OUT/model; rerun to resume")


def add_model_commands(sub) -> None:
    """evaluate, predict, serve, export: using a trained model."""
    p = command(sub, "evaluate", cmd_evaluate, help="score a model on another corpus (cross-corpus), labels by name")
    p.add_argument("model", help="a model directory")
    p.add_argument("--corpus", required=True, help="iemocap, ravdess, emodb, cremad or manifest")
    p.add_argument("--root", required=True, help="the corpus directory (a CSV/JSONL file for 'manifest')")
    p.add_argument("--fold", type=int, help="only this fold's test speakers (default: every utterance)")
    p.add_argument("--map", metavar="FROM=TO,...", help="corpus labels renamed to model labels (e.g. calm=neutral); "
                                                        "labels of the same name match, the rest are left out")
    p.add_argument("--out", help="directory for result.json and predictions.jsonl (default runs/evaluate-CORPUS)")
    p.add_argument("--batch-size", type=int, default=16, help="recordings per forward pass (default 16)")

    p = command(sub, "predict", cmd_predict, help="emotion of audio files, or of a long recording over time")
    p.add_argument("model", help="a model directory (gmptl train OUT/model, or a gmptl cv fold's model)")
    p.add_argument("paths", nargs="+", help="audio files, directories (searched recursively) or globs")
    p.add_argument("--out", help="write CSV or JSONL (by suffix) instead of the table")
    p.add_argument("--batch-size", type=int, default=16, help="recordings per forward pass (default 16)")
    p.add_argument("--timeline", action="store_true", help="sliding windows over one recording of any length")
    p.add_argument("--window", type=float, default=2.0, help="timeline window in seconds (default 2)")
    p.add_argument("--hop", type=float, default=0.5, help="timeline hop in seconds (default 0.5)")
    p.add_argument("--plot", help="with --timeline: a PNG of each emotion's probability over time "
                                  "(and, for GMP-TL models, the frame pseudo-label track)")
    p.add_argument("--track", help="with --timeline: a CSV of every frame's pseudo-labels (GMP-TL models)")
    p.add_argument("--marks", help="with --plot: a CSV of known segments (start,end,label in seconds) shaded on it")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="onnx: onnxruntime on MODEL/model.onnx, or on MODEL if it is an .onnx file")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast, faster; needs a CPU with native bf16 (torch backend)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="the raw scores' softmax, without the temperature fitted on validation speakers")

    p = command(sub, "serve", cmd_serve, help="an HTTP service: POST audio to /v1/predict (docs at /docs)")
    p.add_argument("model", help="a model directory (or an .onnx file with --backend onnx)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="larger uploads answer 413 (default 50)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /v1/predict and /v1/model "
                                   "(default: $GMPTL_TOKEN; none: open)")
    p.add_argument("--insecure", action="store_true", help="serve beyond loopback without a token")
    p.add_argument("--max-audio-seconds", type=float, default=3600.0,
                   help="longer recordings answer 413, read from the header before decoding (default 3600)")
    p.add_argument("--max-inflight-seconds", type=float, default=7200.0,
                   help="audio admitted and not yet answered; beyond it requests answer 503 with Retry-After "
                        "(default 7200: five 21-minute recordings)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="as for predict")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="as for predict")
    p.add_argument("--no-calibrate", action="store_true", help="as for predict")

    p = command(sub, "export", cmd_export, help="export a model directory to ONNX (dynamic batch and length)")
    p.add_argument("model", help="a model directory")
    p.add_argument("--onnx", help="output file (default MODEL/model.onnx)")


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from . import dist

    dist.init()  # under torchrun: join the process group; alone: nothing
    if args.command in ("cv", "train", "reproduce", "sweep"):
        from .provenance import code_version

        code_version()  # pinned now: results record the code this run started with
    if not dist.is_main():
        sys.stdout = open(os.devnull, "w")  # one table, from rank 0
    level = logging.DEBUG if args.verbose else logging.INFO if dist.is_main() else logging.WARNING
    logging.basicConfig(level=level, format=("" if dist.is_main() else f"[rank {dist.rank()}] ")
                        + "%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # Third-party chatter (weight-loading bars, hub notices) only with --verbose.
        for name in ("transformers", "huggingface_hub", "urllib3", "faiss", "matplotlib"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return args.func(args)
    except GmptlError as e:
        if args.verbose:
            raise
        fatal(str(e))
    except KeyboardInterrupt:
        fatal("interrupted", 130)
    except BrokenPipeError:  # the reader left (`gmptl data ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
