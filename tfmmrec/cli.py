"""The tfmmrec command line: train, evaluate, export, serve and query multimodal recommenders.

Thin wrappers over ``tfmmrec.pipeline`` (no library module imports this one).

Errors raised on purpose (``TfmmrecError``) are printed as one line without a stack trace and
exit with status 2. Ctrl-C exits with 130 and one line saying what running the command again
does (``train`` resumes from its last checkpoint); output piped into a reader that stops early
(``| head``) ends the command quietly with 141, as a shell tool killed by SIGPIPE.

Output: progress, results and where files went. TensorFlow/ScaNN C++ logs, CUDA/oneDNN notices
and library warnings are kept off the screen (native lines go to a temporary file, shown only
when the command fails); ``--verbose`` shows everything.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import tfmmrec
from tfmmrec._env import native_stderr_to, quiet_output, show_progress
from tfmmrec.config import INDEX_KINDS, STRATEGIES, ExportConfig, load_config
from tfmmrec.errors import ConfigError, DataError, TfmmrecError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
# Commands that write through temporary names and have no other use for SIGTERM: they take it
# as Ctrl-C (their temp folders are removed, the line says what was kept). `train`/`demo`
# keep its default (a cluster's workers and TensorFlow's preemption handling rely on it), as
# do `prepare`/`encode` (SIGTERM reaches the parent only: its worker pool would finish every
# queued shard first; the next run removes their temp files); `serve` installs its own.
_TERM_AS_INTERRUPT = frozenset({"export", "catalog", "evaluate"})


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so the same cleanup runs."""
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as `yes | head` ends `yes`

# What Ctrl-C leaves behind, per command: only training keeps checkpoints to resume from;
# versions, metrics and shards are written under temporary names and renamed when complete.
_INTERRUPTED = {
    "train": "run the same command again to resume from the last checkpoint",
    "demo": "run the same command again (an unfinished training resumes from its last "
            "checkpoint)",
    "prepare": "finished shards are kept; run the same command again to write the rest",
    "encode": "finished shards are kept; run the same command again to encode the rest",
    "export": "a version is renamed into place only when complete, so nothing was "
              "half-written; the command can be run again",
    "catalog": "the new version is renamed into place only when complete, so nothing was "
               "half-written and the served versions are unchanged; the command can be run "
               "again",
    "evaluate": "metrics, plots and Projector files are renamed into place only when "
                "complete, so nothing was half-written; the command can be run again",
    "validate": "nothing was written; the command can be run again",
    "query": "nothing was written; the command can be run again",
}


def _add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--config", required=required,
                        help="YAML config (see configs/); omitted: the embedded demo defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE", help="override a config field (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfmmrec", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=tfmmrec.__version__)
    _add_output_args(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True,
                                     parser_class=_CommandParser)

    demo = commands.add_parser("demo", help="build demo data, train, evaluate, export, query")
    _add_config_args(demo)
    demo.add_argument("--output", default=None,
                      help="run directory (default: runs/demo); the model is exported beside "
                           "it, to OUTPUT/../models/, unless export.base_dir is set")

    for name, help_text in (("train", "train a retrieval model"),
                            ("evaluate", "evaluate a trained model (writes metrics.json + PNG)"),
                            ("export", "export a TF Serving version (SavedModel + index)"),
                            ("validate", "validate a dataset folder and report what was found")):
        sub = commands.add_parser(name, help=help_text)
        _add_config_args(sub)
        if name in ("evaluate", "export"):
            sub.add_argument("--checkpoint", help="weights prefix (default: the run's latest)")
        if name == "evaluate":
            _add_evaluate_args(sub)
        if name == "export":
            sub.add_argument("--index", choices=[*INDEX_KINDS, "both"],
                             help="override export.index; both: the ScaNN export as NAME and a "
                                  "BruteForce one (stock TF Serving) as NAME-bruteforce")
        if name == "train":
            sub.add_argument("--strategy", choices=list(STRATEGIES),
                             help="override train.strategy (multi_worker reads TF_CONFIG)")
    prepare = commands.add_parser(
        "prepare", help="convert a dataset folder into sharded TFRecords (media decoded once; "
                        "resumable)")
    _add_config_args(prepare)
    prepare.add_argument("--output", help="output directory, local or gs://... (default: "
                                          "train.tfrecords)")
    prepare.add_argument("--workers", type=int, help="worker processes (default: "
                                                     "train.prepare_workers, 0 = all cores)")
    prepare.add_argument("--shards", type=int, help="shards per table (default: "
                                                    "train.tfrecord_shards, 0 = sized from data)")
    _add_runner_arg(prepare)
    encode = commands.add_parser(
        "encode", help="compute every frozen encoder's features of the whole catalogue into "
                       "sharded TFRecords that train/evaluate/export read (train.features)")
    _add_config_args(encode)
    encode.add_argument("--output", help="output directory, local or gs://... (default: "
                                         "train.features)")
    encode.add_argument("--shards", type=int, help="shards per encoder (default: sized from "
                                                   "the data; one per item shard when "
                                                   "train.tfrecords is set)")
    encode.add_argument("--workers", type=int, help="with --runner: local worker processes "
                                                    "and the minimum shard count")
    _add_runner_arg(encode)
    _add_catalog_command(commands)
    _add_serving_commands(commands)
    return parser


def _add_runner_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runner", help="run as an Apache Beam pipeline on this runner "
                                         "(DataflowRunner, FlinkRunner, SparkRunner, or "
                                         "DirectRunner = Beam's local FnApiRunner); any further "
                                         "--flags go to Beam. Needs the [beam] extra")


def _add_catalog_command(commands) -> None:
    """``catalog add|update|remove``: change an exported model's items without retraining."""
    catalog = commands.add_parser(
        "catalog", help="add, update or remove items of an exported model (next version, no "
                        "retraining)", formatter_class=_LineFormatter)
    catalog.add_argument("operation", choices=["add", "update", "remove"],
                         help="add: embed the --items rows as new items\n"
                              "update: re-embed served items from the --items rows\n"
                              "remove: drop the items of --ids or --items")
    catalog.add_argument("--model-base-path", required=True, metavar="BASE/NAME",
                         help="the model's folder of integer versions; the newest is updated")
    catalog.add_argument("--items", help="items table (.csv/.jsonl/.parquet) with item_id and "
                                         "the training items table's columns; media paths "
                                         "relative to its folder (remove: item_id only)")
    catalog.add_argument("--ids", nargs="+", help="remove: item ids (instead of --items)")
    catalog.add_argument("--batch-size", type=int, default=64,
                         help="items embedded per call (default 64)")
    catalog.set_defaults(handler=_catalog)


class _LineFormatter(argparse.HelpFormatter):
    """Help texts keep their line breaks (one line per choice), each line wrapped as usual."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        split = super()._split_lines  # (a bare super() fails inside a comprehension)
        return [line for part in text.splitlines() for line in split(part, width)]


def _catalog(args) -> int:
    from tfmmrec.export import catalog

    if args.operation != "remove" and args.ids:
        print("error: --ids applies to remove only; pass --items FILE", file=sys.stderr)
        return EXIT_USER_ERROR
    started = time.perf_counter()
    result = catalog.apply(args.model_base_path, args.operation, items=args.items,
                           item_ids=args.ids, batch_size=args.batch_size)
    print(f"{args.operation}: {result.added} added, {result.updated} updated, {result.removed} "
          f"removed → {result.version_dir} ({result.num_items} items, from "
          f"{result.previous_version.name}; {time.perf_counter() - started:.1f} s)")
    return 0


def _add_serving_commands(commands) -> None:
    """``query`` and ``serve`` live with the serving package (imported lazily)."""
    try:
        from tfmmrec.serving.cli import add_serving_commands
    except ImportError:
        return
    add_serving_commands(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (see the module docstring)."""
    try:
        return _main(argv)
    except BrokenPipeError:  # `tfmmrec query --embed u1 | head -c 10`: the reader left
        return _stdout_gone()


def _main(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Before anything imports TensorFlow, parsing included: `query`'s --<modality> options
    # come from the modality registry.
    verbose = _verbose_flag(argv)
    quiet_output(verbose)
    native_log = Path(tempfile.gettempdir()) / f"tfmmrec-native-{os.getpid()}.log"
    failed = True
    # a caller's own show_progress() (a script running commands) survives the command
    handlers_before = set(logging.getLogger().handlers)
    level_before = logging.getLogger("tfmmrec").level
    with (contextlib.nullcontext() if verbose else native_stderr_to(native_log)):
        handler = args = None
        try:
            parser = build_parser()
            args, beam_args = parser.parse_known_args(argv)
            if beam_args and not getattr(args, "runner", None):
                # the hint only where --runner exists (prepare, encode); elsewhere a typo
                hint = (" (Beam pipeline options need --runner)" if hasattr(args, "runner")
                        else "")
                parser.error(f"unrecognized arguments: {' '.join(beam_args)}{hint}")
            args.beam_args = beam_args
            handler = show_progress(quiet=args.quiet)
            with _sigterm_interrupts(args.command in _TERM_AS_INTERRUPT):
                code = int(_run(args) or 0)
            sys.stdout.flush()  # a reader that left (`| head`) is found here, not at exit
            failed = code != 0
            return code
        except TfmmrecError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt as exc:
            failed = False
            print(_interrupted_message(getattr(args, "command", None)), file=sys.stderr)
            return EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
        except BrokenPipeError:
            failed = False  # the output's reader stopped early: nothing to explain
            raise
        except SystemExit as exc:  # argparse: --help, or a usage error it printed
            failed = exc.code not in (0, None)
            sys.stdout.flush()  # `tfmmrec --help | head -1`: a closed pipe is found here
            raise
        finally:
            if handler is not None and handler not in handlers_before:
                logging.getLogger().removeHandler(handler)
            logging.getLogger("tfmmrec").setLevel(level_before)
            if not verbose:
                _report_native_log(native_log, failed)


@contextlib.contextmanager
def _sigterm_interrupts(enabled: bool) -> Iterator[None]:
    """Within: SIGTERM (``kill``, systemd, Kubernetes) raises :class:`_Terminated` where Ctrl-C
    would raise KeyboardInterrupt, so a command's temporary folder is removed and a line said:
    by default the process died at once, leaving a hidden temp version and no word. Only in
    the main thread and over the default handler (a caller's own stays)."""
    if not (enabled and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
        yield
        return

    def terminate(signum, frame):
        raise _Terminated

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interrupted_message(command: str | None) -> str:
    """The line Ctrl-C prints: what was kept and whether running the command again resumes
    (only ``train`` has checkpoints; every other command writes through temporary names)."""
    what = _INTERRUPTED.get(command or "")
    return f"interrupted: {what}" if what else "interrupted"


def _stdout_gone() -> int:
    """The reader of stdout closed it (``| head``): no traceback, and stdout pointed at
    ``/dev/null`` so that the interpreter's last flush of what is still buffered cannot fail
    again on exit (Python's documented recipe). Returns the shell's status for SIGPIPE."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no descriptor (captured)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def _verbose_flag(argv: Sequence[str]) -> bool:
    """``-v``/``--verbose`` among the global options, read before the full parser exists."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-v", "--verbose", action="store_true")
    pre.add_argument("-q", "--quiet", action="store_true")
    return pre.parse_known_args(argv)[0].verbose


def _add_output_args(parser: argparse.ArgumentParser, default) -> None:
    """``-q``/``-v``: on the program (default False) and on every command (default SUPPRESS,
    so ``tfmmrec -q train`` is not undone by the command's unset flag): either place works."""
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="only warnings and results")
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="also show TensorFlow/ScaNN C++ logs and library warnings")


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser whose ``deferred`` callbacks add arguments on first use: ``tfmmrec
    query``'s ``--<modality>`` options come from the modality registry, which loads
    TensorFlow, so only a ``query`` command (or its help) pays for it. Every command takes
    ``-q``/``-v`` as the program does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _add_output_args(self, default=argparse.SUPPRESS)
        self.deferred: list = []

    def _complete(self) -> None:
        while self.deferred:
            self.deferred.pop(0)(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def _report_native_log(path: Path, failed: bool) -> None:
    """Keep the native libraries' log only when it may explain a failure."""
    if failed and path.is_file() and path.stat().st_size:
        print(f"(TensorFlow/ScaNN native log: {path}; --verbose shows it live)", file=sys.stderr)
    else:
        path.unlink(missing_ok=True)


def _run(args) -> int:
    if hasattr(args, "handler"):
        return args.handler(args)
    from tfmmrec import pipeline

    if getattr(args, "strategy", None):
        args.overrides.append(f"train.strategy={args.strategy}")
    config = load_config(args.config, args.overrides)
    if args.command == "prepare":
        return _prepare(config, args)
    if args.command == "encode":
        return _encode(config, args)
    if args.command == "demo":
        return _demo(config, args.output)
    if args.command == "validate":
        return _validate(config)
    if args.command == "train":
        result = pipeline.train(config)
        print(result.workspace.split.sizes())
        print(f"trained {result.epochs_run} epoch(s) at {result.examples_per_second:,.0f} "
              f"examples/s; checkpoint: {result.checkpoint}")
        if config.model.linear_cf == "auto":
            chosen = json.loads((result.output_dir / pipeline.RUN_FILE).read_text())[
                "early_stopping"]
            print(f"linear CF: {chosen['linear_cf']}, chosen on validation ({chosen['metric']}: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in chosen["linear_cf_validation"].items())
                  + ")")
        return 0
    if args.command == "evaluate":
        return _evaluate(config, args)
    if args.command == "export":
        return _export(config, args.checkpoint, args.index)
    raise AssertionError(args.command)


def _add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--baselines", nargs="?", const="all", metavar="NAMES",
        help="also tune (on a validation carve of the training split) and score classic "
             "baselines as rows of the table: all (default), or a comma list of ease, "
             "ease_recency, ials, ridge, kernel, knn")
    parser.add_argument(
        "--test", metavar="FILE",
        help="score this test set (CSV/JSONL/Parquet with user_id,item_id and an optional "
             "rating) instead of the split's; with data.split: none it is the only way to "
             "evaluate")
    parser.add_argument(
        "--export", metavar="DIR",
        help="score an exported model (a version directory, or a model directory: its newest "
             "version) instead of the checkpoint: its embed_query signature and item table")
    parser.add_argument(
        "--candidates", metavar="FILE",
        help="rank only these items (a text file, one item_id per line), e.g. new items for "
             "a cold-start evaluation")


def _evaluate(config, args) -> int:
    from tfmmrec import pipeline
    from tfmmrec.data.dataset import load_candidates, read_candidate_ids
    from tfmmrec.data.splits import with_test
    from tfmmrec.evaluation.baseline_suite import BASELINES
    from tfmmrec.evaluation.protocol import (
        check_evaluable,
        historyless_note,
        popularity_note,
        unscored_note,
    )
    from tfmmrec.models.ranking import ranking_only_note
    from tfmmrec.training.trained_data import check_trained_data

    names: list[str] = []
    if args.baselines is not None:
        names = list(BASELINES) if args.baselines == "all" else [
            n.strip() for n in args.baselines.split(",") if n.strip()]
        if not names:  # `--baselines ''` (an unset shell variable) ran none, silently
            raise ConfigError(f"--baselines {args.baselines!r} names no baseline; choose from "
                              f"all, {', '.join(BASELINES)}, or leave --baselines out")
        unknown = [n for n in names if n not in BASELINES]
        if unknown:
            raise ConfigError(f"--baselines {args.baselines!r}: unknown {', '.join(unknown)}; "
                              f"choose from all, {', '.join(BASELINES)}")
    run = None
    if not args.export:  # a missing run or an architecture override: refused before encoding
        run = Path(pipeline.check_restorable(config.train.output_dir, config,
                                             args.checkpoint)[1].train.output_dir)
    if args.candidates:  # likewise an unreadable candidates file
        read_candidate_ids(args.candidates)
    dataset, split = pipeline.load_split(config)
    evaluated = split
    if args.test or args.candidates:
        test = _supplied_test(args.test, dataset, config) if args.test else None
        candidates = load_candidates(args.candidates, dataset.catalog) if args.candidates \
            else None
        evaluated = with_test(split, test, candidates)
    if run is not None:  # and data other than the run trained on, before encoding too
        check_trained_data(run / pipeline.RUN_FILE, dataset, evaluated)
    print(evaluated.sizes())
    check_evaluable(evaluated, dataset.user_ids, dataset.num_items, test=args.test,
                    candidates=args.candidates)  # before encoding or restoring anything
    note = unscored_note(evaluated, dataset.user_ids, dataset.num_items, args.candidates)
    if note:  # the sizes above count every test row; the metrics fewer
        print(f"note: {note}")
    if names and (note := historyless_note(evaluated)):
        print(f"note: {note}")
    if note := popularity_note(evaluated):
        print(f"note: {note}")
    workspace = dataclasses.replace(pipeline.prepare(config, progress=not args.quiet,
                                                     data=(dataset, split)), split=evaluated)
    embeddings, name = None, "tfmmrec"
    if args.export:
        from tfmmrec.evaluation.exported import exported_embeddings

        embeddings = exported_embeddings(args.export, workspace.user_ids,
                                         workspace.dataset.catalog.item_ids,
                                         config.eval.batch_size,
                                         trained_users=workspace.split.train["user_id"].unique())
        name = "tfmmrec (export)"
        if _two_stage_export(args.export):
            print("note: this export re-ranks its retrieval candidates with a ranking head; "
                  "its row scores the retrieval stage (embed_query against the item table), "
                  "not what `recommend` serves: the checkpoint's ' · ranking head' row gives "
                  "the two-stage figures")
    if config.ranking.enabled and (retrieval := ranking_only_note(
            config.ranking.retrieval_weight, config.ranking.retrieve_candidates)):
        print(f"note: {retrieval}")
    out = Path(config.train.output_dir)
    output_name = pipeline.evaluation_output_name(args.test, args.candidates, args.export,
                                                  eval_dir=out / "eval")
    results = pipeline.evaluate(config, args.checkpoint, workspace=workspace, name=name,
                                classic_baselines=names, embeddings=embeddings,
                                output_name=output_name, sources=pipeline.evaluation_sources(
                                    args.test, args.candidates, args.export))
    _print_results(results, config.eval.ks, workspace)
    print(f"wrote {out / 'eval' / output_name}.json and {output_name}.png")
    if not args.export and (out / "logs" / "projector").is_dir():
        print(f"item embeddings for TensorBoard's Projector: {out / 'logs' / 'projector'} "
              f"(tensorboard --logdir {out / 'logs'})")
    return 0


def _supplied_test(path: str, dataset, config):
    """``evaluate --test FILE``'s rows, filtered by ``data.min_rating`` as interactions.csv's
    are (said, with the count) and, for a listwise ranking head, their ratings checked before
    anything is encoded or restored."""
    from tfmmrec.data.dataset import load_test_interactions
    from tfmmrec.models.ranking import rating_targets

    test = load_test_interactions(path, dataset, config.data.duplicate_interactions,
                                  config.data.min_rating)
    if test.attrs["below_min_rating"]:
        print(f"note: {test.attrs['below_min_rating']} row(s) of {path} rated below "
              f"data.min_rating={config.data.min_rating:g} left out, as interactions.csv's are")
    if config.ranking.enabled and config.ranking.task == "listwise" and "rating" in test:
        rating_targets(test, "listwise", test.attrs["source"])
    return test


def _export(config, checkpoint, index: str | None) -> int:
    """One command, one or both index kinds (sharing one model restore)."""
    from tfmmrec import pipeline

    kinds = {"both": ["scann", "brute_force"]}.get(index, [index or config.export.index])

    def named(config, kind: str):
        suffix = "-bruteforce" if index == "both" and kind == "brute_force" else ""
        return load_config(config, [f"export.model_name={config.export.model_name}{suffix}"])

    for kind in kinds:  # every model it writes, before loading the data and the model
        pipeline.check_export_destination(named(config, kind))
    model, workspace = pipeline.restore(config.train.output_dir, config, checkpoint=checkpoint)
    config = workspace.config
    for kind in kinds:
        path = pipeline.export(named(config, kind), model=model, workspace=workspace,
                               index=kind)
        print(f"exported {path} ({kind})")
    print(f"TF Serving model config: {Path(config.export.base_dir) / 'models.config'}")
    return 0


def _print_results(results: dict, ks, workspace) -> None:
    """The metrics table, then a note for each recall@K that is 1 for any model (K reaches
    the number of items ranked): without it a small catalogue's recall@100 reads as a result."""
    from tfmmrec.evaluation.protocol import recall_notes
    from tfmmrec.evaluation.report import format_table

    columns = [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks[:2]] + ["mrr"]
    if any("top_k_accuracy@100" in r for r in results.values()):
        columns.append("top_k_accuracy@100")
    from tfmmrec.pipeline import retrieval_rows

    retrieval = retrieval_rows(results)
    print(format_table(retrieval, columns))
    heads = {row: r for row, r in results.items() if row not in retrieval}
    for row, metrics in heads.items():  # the head's own metrics, and retrieve → re-rank
        print(format_table({row: metrics}, list(metrics)))
    for note in recall_notes(workspace.split, workspace.user_ids, workspace.dataset.num_items,
                             ks).values():
        print(f"note: {note}")


def _two_stage_export(path: str) -> bool:
    """Whether the export at ``path`` (a version or a model folder) re-ranks (its metadata)."""
    from tfmmrec.export.loader import version_of
    from tfmmrec.export.writer import read_metadata

    return bool(read_metadata(version_of(path)).get("graph_constants", {}).get("two_stage"))


def _check_ratings(config, dataset) -> None:
    """What ``train`` checks of the ratings for ``ranking.task``, named by ``validate`` first
    (it said OK, then ``train`` refused a negative listwise rating or a missing column)."""
    from tfmmrec.models.ranking import interactions_source, rating_targets, warn_unread_ratings

    if not config.ranking.enabled:
        return
    source = interactions_source(dataset.root)
    if config.ranking.task == "binary":
        warn_unread_ratings(dataset.interactions, source)
    else:
        rating_targets(dataset.interactions, config.ranking.task, source)


def _validate(config) -> int:
    from tfmmrec import modalities
    from tfmmrec.data import validate
    from tfmmrec.data.splits import split_interactions, validation_split
    from tfmmrec.evaluation.protocol import check_evaluable
    from tfmmrec.pipeline import check_linear_cf_choices, resolve_dataset
    from tfmmrec.towers.encoders import check_local_weights

    check_linear_cf_choices(config)  # what `train` refuses first, `validate` names too
    dataset = resolve_dataset(config)
    catalog = dataset.catalog
    check_local_weights(config, [m for m in catalog.modalities if config.tower(m).enabled])
    _check_ratings(config, dataset)
    print(f"dataset {dataset.root}: {len(catalog)} items, {len(dataset.interactions)} "
          f"interactions, {dataset.interactions['user_id'].nunique()} users")
    columns = catalog.columns
    print("  " + "; ".join(
        f"{spec.name} column{'' if isinstance(spec, modalities.FileModality) else 's'}: "
        f"{', '.join(columns.of(spec.name)) or '-'}" for spec in modalities.specs()))
    # every referenced media file, checked without a full decode (a warning lists the bad ones)
    table = validate.find_items_table(dataset.root, config.data.items_file)
    bad = validate.check_media(catalog, table, modalities.settings_from_config(config),
                              config.export.limits)
    for modality in catalog.modalities:
        refused = len(bad.get(modality, ()))
        print(f"  {modality}: present for {int(catalog.presence(modality).sum())} items"
              + (f", {refused} of them undecodable or over the limits (listed above)"
                 if refused else ""))
    d = config.data
    split = split_interactions(dataset.interactions, d.split, d.test_fraction, d.seed)
    print(f"  {split.sizes()}")
    if split.kind != "none":  # trains, but `evaluate` will refuse: say so now
        try:
            check_evaluable(split, dataset.user_ids, dataset.num_items)
        except DataError as exc:
            print(f"  note: {exc}")
    try:
        validation = validation_split(split, d.test_fraction, d.seed)
    except TfmmrecError as exc:  # only tuned choices need it (fusion selection, baselines)
        print(f"  no validation carve for tuned choices: {exc}")
    else:
        train, held = len(validation.train), len(validation.test)
        if split.validation is not None:  # the user's own rows, not a carve of train
            print(f"  validation for tuned choices: the {held} row{'' if held == 1 else 's'} "
                  f"marked validation, held out against the {train} training rows")
        else:
            print(f"  validation for tuned choices ({validation.kind}): {train} train / {held} "
                  "held-out interactions, carved from the training rows")
    if dataset.users is not None:
        import pandas as pd

        def kind(column: str) -> str:  # as the query tower reads it (towers/query.py)
            numeric = pd.api.types.is_numeric_dtype(dataset.users[column])
            return f"{column} ({'numeric' if numeric else 'categorical'})"

        kinds = [kind(c) for c in dataset.user_feature_columns]
        print(f"  user features: {', '.join(kinds) or '-'}")
    return 0


def _prepare(config, args) -> int:
    from tfmmrec.pipeline import resolve_dataset

    start = time.perf_counter()
    if args.runner:
        from tfmmrec.beam import require_beam

        require_beam()
        from tfmmrec.beam.prepare import prepare as beam_prepare
        from tfmmrec.beam.prepare import prepare_options

        # the runner and Beam flags first: a typo is reported before the data is loaded
        options = prepare_options(config, args.runner, args.beam_args, args.workers)
        manifest = beam_prepare(config, args.output, runner=args.runner,
                                beam_args=args.beam_args, dataset=resolve_dataset(config),
                                workers=args.workers, shards=args.shards, options=options,
                                progress=not args.quiet)
    else:
        from tfmmrec.data.tfrecords import write_tfrecords

        manifest = write_tfrecords(config, args.output, dataset=resolve_dataset(config),
                                   workers=args.workers, shards=args.shards,
                                   progress=not args.quiet)
    shards = sum(len(s) for s in manifest.shards.values())
    print(f"wrote {manifest.directory}: {manifest.num_items} items, "
          f"{manifest.count('train')} train / {manifest.count('test')} test interactions in "
          f"{shards} shards ({time.perf_counter() - start:.0f} s); train from it with "
          f"--set train.tfrecords={manifest.directory}")
    return 0


def _encode(config, args) -> int:
    from tfmmrec.pipeline import resolve_dataset

    start = time.perf_counter()
    if args.runner:
        from tfmmrec.beam import require_beam

        require_beam()  # before any work
    # A dataset folder is streamed (memory independent of the catalogue); the demo is loaded.
    dataset = None if config.data.path else resolve_dataset(config)
    if args.runner:
        from tfmmrec.beam.encode import encode as beam_encode

        manifests = beam_encode(config, args.output, runner=args.runner,
                                beam_args=args.beam_args, dataset=dataset,
                                shards=args.shards, workers=args.workers,
                                progress=not args.quiet)
    else:
        from tfmmrec.towers.features import encode

        manifests = encode(config, args.output, dataset=dataset,
                           shards=args.shards, progress=not args.quiet)
    for modality, manifest in manifests.items():
        print(f"{modality}: {manifest.encoded} of {manifest.num_items} items, "
              f"{manifest.feature_dim}-d, {len(manifest.shards)} shard(s) in {manifest.directory}")
    output = args.output or config.train.features
    print(f"encoded in {time.perf_counter() - start:.0f} s; train, evaluate and export read them "
          f"with --set train.features={output}")
    return 0


def _demo(config, output: str | None) -> int:
    """The main job: everything end to end on the embedded catalogue, with timings."""
    from tfmmrec import pipeline
    from tfmmrec.export.loader import ExportedModel
    from tfmmrec.training.trainer import check_writable

    if output:
        # The export goes beside the run (<output>/../models) unless export.base_dir was set.
        overrides = [f"train.output_dir={output}"]
        if load_config(config).export.base_dir == ExportConfig().base_dir:
            overrides.append(f"export.base_dir={Path(output).parent / 'models'}")
        config = load_config(config, overrides)
    start = time.perf_counter()
    check_writable(Path(config.train.output_dir))
    pipeline.check_export_destination(config)  # before training, not after it
    workspace = pipeline.prepare(config)
    result = pipeline.train(config, workspace=workspace)
    results = pipeline.evaluate(config, model=result.model, workspace=workspace)
    print(f"\n{workspace.split.kind} split, {len(workspace.split.test)} test interactions:")
    _print_results(results, config.eval.ks, workspace)
    version = pipeline.export(config, model=result.model, workspace=workspace)
    exported = ExportedModel(version)
    user = str(workspace.user_ids[0])
    top = exported.recommend([user])
    print(f"\nexported model {version} (index: {exported.metadata['index']}); "
          f"top-{len(top['item_ids'][0])} for user {user}: "
          f"{', '.join(i.decode() for i in top['item_ids'][0][:5])} ...")
    if "query_text" in exported.signatures:
        text = str(workspace.dataset.catalog.texts[0])
        hits = exported.call("query_text", text=[text], k=5)["item_ids"][0]
        print(f"query_text {text[:50]!r}... → {', '.join(i.decode() for i in hits)}")
    out = Path(config.train.output_dir)
    print(f"\nrun directory: {out} (checkpoints/, logs/ for TensorBoard incl. the item "
          f"embedding Projector, eval/metrics.json, eval/metrics.png)\nexport: {version}\n"
          f"time: {time.perf_counter() - start:.0f} s, peak RSS: {_peak_rss_gib():.2f} GiB")
    return 0


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


if __name__ == "__main__":
    sys.exit(main())
