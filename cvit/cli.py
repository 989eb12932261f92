"""The `cvit` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from cvit.errors import ConfigError, CvitError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append", default=[], metavar="YAML",
                        help="config file; repeat to merge several in order")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotlist overrides, applied last")


def cmd_fit(args: argparse.Namespace) -> None:
    from cvit.config.load import load_config
    from cvit.run.loop import ContinualRun

    cfg, sources = load_config(args.config, args.overrides)
    run = ContinualRun(cfg, sources, args.resume)
    try:
        run_dir = run.run(resume=args.resume is not None)
    except (KeyboardInterrupt, SystemExit):
        if run.run_dir.exists:
            print(f"\ninterrupted: completed tasks are saved in {run.run_dir.path}; continue with the same "
                  f"arguments and --resume {run.run_dir.path}", file=sys.stderr)
        raise
    if run.rank == 0:
        print(f"run directory: {run_dir}\nreport: {run_dir / 'report.md'}")


def cmd_validate(args: argparse.Namespace) -> None:
    from cvit.config.load import load_config
    from cvit.run.loop import ContinualRun

    cfg, sources = load_config(args.config, args.overrides)
    run = ContinualRun(cfg, sources)
    run.prepare()
    print(f"config OK: method {cfg.method.name} ({cfg.method.mode}) on {cfg.benchmark.name}")
    for task in run.stream + run.unseen:
        train = len(run.datamodule.train_records.get(task.name, []))
        test = len(run.datamodule.test_records.get(task.name, []))
        kind = "unseen" if task.unseen else f"stage {task.index}"
        print(f"  {task.name:<16} {kind:<9} train {train:>6}  test {test:>5}  scorer {task.scorer}")
    print(f"  callbacks: {', '.join(run.callbacks) or 'none'}")
    print(f"  images: {run.datamodule.verify_images()} records' images decode")


def cmd_metrics(args: argparse.Namespace) -> None:
    from cvit.errors import DataError
    from cvit.eval.metrics import continual_metrics, format_metrics, read_matrix_doc, run_metrics
    from cvit.run.document import RunDocument

    doc = read_matrix_doc(args.matrix)
    try:
        if args.reference:
            metrics = continual_metrics(doc["matrix"], reference_scores(doc, read_matrix_doc(args.reference)))
        else:  # a run's matrix.json or a hand-written {tasks, matrix}; a single-stage run has only `last`
            metrics = run_metrics(RunDocument.of_matrix(doc))
    except ValueError as err:
        raise DataError(f"{args.matrix}: {err}") from None
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))


def reference_scores(doc: dict, reference: dict) -> list[float]:
    """The reference's last-row score of each trained task of `doc`, matched by task name."""
    from cvit.errors import DataError

    scores = dict(zip(reference["tasks"], reference["matrix"][-1] if reference["matrix"] else [], strict=False))
    trained = doc["tasks"][: len(doc["matrix"])]
    missing = [task for task in trained if task not in scores]
    if missing:
        raise DataError(f"the reference has no score for task(s) {', '.join(missing)} in its last row")
    return [scores[task] for task in trained]


def cmd_data_check(args: argparse.Namespace) -> None:
    from cvit.config.load import load_config
    from cvit.config.validate import validate_benchmark
    from cvit.data.check import check_benchmark, format_checks
    from cvit.errors import DataError

    cfg, sources = load_config(args.config, args.overrides, sections=("benchmark",))
    validate_benchmark(cfg, sources)
    checks = check_benchmark(cfg.benchmark)
    print(format_checks(checks))
    if any(c.problems for c in checks):
        raise DataError(f"data root {cfg.benchmark.root} has problems (listed above)")


def cmd_score(args: argparse.Namespace) -> None:
    from cvit.config.load import load_config
    from cvit.reports.score_file import score_predictions

    cfg, sources = load_config(args.config, args.overrides, sections=("benchmark",))
    print(json.dumps(score_predictions(cfg, sources, args.task, Path(args.predictions)), indent=2))


def cmd_report(args: argparse.Namespace) -> None:
    from cvit.reports.run_report import write_report

    print(write_report(Path(args.run_dir)))


def cmd_compare(args: argparse.Namespace) -> None:
    from cvit.reports.compare import compare_runs

    runs = [Path(run) for run in args.run_dirs] + [[Path(run) for run in group] for group in args.seeds]
    if not runs:
        raise ConfigError("cvit compare: give at least one RUN_DIR or --seeds group")
    print(compare_runs(runs, Path(args.out) if args.out else None), end="")


def cmd_tiny_model(args: argparse.Namespace) -> None:
    if args.family == "qwen2_vl":
        from cvit.model.tiny_qwen import save_tiny_qwen2vl as save
    else:
        from cvit.model.tiny import save_tiny_llava as save
    print(save(args.out_dir, seed=args.seed))


def cmd_make_synthetic(args: argparse.Namespace) -> None:
    from cvit.synthetic.tasks import LONG_TASKS, TASKS
    from cvit.synthetic.writer import SyntheticSizes, make_synthetic

    sizes = SyntheticSizes(train=args.train, test=args.test, base=args.base, seed=args.seed)
    print(make_synthetic(args.out_dir, sizes, LONG_TASKS if args.long else TASKS))


def cmd_base_train(args: argparse.Namespace) -> None:
    from cvit.run.pretrain import base_train

    settings = ("steps", "align_steps", "lr", "batch_size", "seed", "train_vision")
    options = {k: v for k, v in vars(args).items() if k in settings and v is not None}
    print(base_train(Path(args.model), Path(args.data), Path(args.out), family=args.family, **options))


def cmd_analyze_cka(args: argparse.Namespace) -> None:
    from cvit.analysis.cka import analyze_run

    out = analyze_run(Path(args.run_dir), args.samples)
    print(f"CKA written to {out / 'cka.json'} and {out / 'cka.png'}")


def cmd_demo(args: argparse.Namespace) -> None:
    from cvit.run.demo import METHODS, run_demo

    run_demo(Path(args.work), Path(args.configs), tuple(args.methods or METHODS), args.templates, tuple(args.set),
             args.jobs)


def cmd_results(args: argparse.Namespace) -> None:
    from cvit.run.results import run_results

    print(run_results(Path(args.work), Path(args.configs), Path(args.out), jobs=args.jobs, seeds=tuple(args.seeds),
                      composed=args.composed))


def cmd_assemble_llava(args: argparse.Namespace) -> None:
    from cvit.run.assemble import assemble_llava

    print(assemble_llava(Path(args.llm), Path(args.projector), Path(args.vision), Path(args.out), args.dtype,
                         args.seed))


def cmd_world_build(args: argparse.Namespace) -> None:
    from cvit.run.world import build_base

    print(f"committed: {build_base(Path(args.work))}")


def cmd_world_check(args: argparse.Namespace) -> None:
    from cvit.run.world_check import world_check

    text, holds = world_check(Path(args.work), Path(args.configs), Path(args.out))
    print(text)
    if not holds:
        raise SystemExit(1)


def cmd_world_calibration(args: argparse.Namespace) -> None:
    from cvit.run.calibration import write_calibration

    print(write_calibration(Path(args.work), Path(args.configs), Path(args.out), args.jobs))


def cmd_world_probe(args: argparse.Namespace) -> None:
    from cvit.run.probe import probe_base

    for name, share in probe_base(Path(args.model)).items():
        print(f"{name:<16} {100 * share:5.1f}%")


def cmd_plan(args: argparse.Namespace) -> None:
    from cvit.plan.report import plan

    methods = [name for name in args.methods.split(",") if name] if args.methods else None
    print(plan(args.config, args.overrides, methods, args.tasks, args.configs), end="")


def build_parser() -> argparse.ArgumentParser:
    from cvit.synthetic.writer import SyntheticSizes

    parser = argparse.ArgumentParser(prog="cvit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="run a continual experiment")
    add_config_args(fit)
    fit.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last completed task")
    fit.set_defaults(func=cmd_fit)
    validate = sub.add_parser("validate", help="check config and data paths without loading a model")
    add_config_args(validate)
    validate.set_defaults(func=cmd_validate)
    metrics = sub.add_parser("metrics", help="continual metrics of a saved accuracy matrix")
    metrics.add_argument("matrix", help='JSON {"tasks": [...], "matrix": [[...], ...]}')
    metrics.add_argument("--json", action="store_true", help="print JSON")
    metrics.add_argument("--reference", help="matrix JSON whose last row is the FWT reference")
    metrics.set_defaults(func=cmd_metrics)
    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="check a data root against a benchmark spec; lists every problem")
    add_config_args(check)
    check.set_defaults(func=cmd_data_check)
    score = sub.add_parser("score", help="score a predictions JSONL ({question_id, text} a line) with a task's scorer")
    score.add_argument("-c", "--config", action="append", default=[], metavar="YAML", help="benchmark spec")
    score.add_argument("--task", required=True, help="task name in the spec")
    score.add_argument("predictions", help="JSONL file, one {question_id, text} object a line")
    score.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotlist overrides, e.g. data.root=DIR, eval.scoring=lenient (official by default)")
    score.set_defaults(func=cmd_score)
    report = sub.add_parser("report", help="(re)write a run's report.md and matrix.png")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)
    compare = sub.add_parser("compare", help="several runs' metrics side by side (and plots with --out)")
    compare.add_argument("run_dirs", nargs="*", metavar="RUN_DIR")
    compare.add_argument("--seeds", nargs="+", action="append", default=[], metavar="RUN_DIR",
                         help="runs of one configuration under several seeds: one row of mean ± standard deviation "
                         "(refused if their configs differ in more than train.seed); repeat for more groups")
    compare.add_argument("--out", metavar="DIR", help="also write comparison.md, tradeoff.png and matrices.png here")
    compare.set_defaults(func=cmd_compare)
    tiny = sub.add_parser("tiny-model", help="build a tiny model (LLaVA or Qwen2-VL) offline and save it")
    tiny.add_argument("out_dir")
    tiny.add_argument("--family", choices=("llava", "qwen2_vl"), default="llava")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_model)
    synthetic = sub.add_parser("make-synthetic", help="write the synthetic benchmark")
    synthetic.add_argument("out_dir")
    defaults = SyntheticSizes()
    synthetic.add_argument("--train", type=int, default=defaults.train, help="training records per task")
    synthetic.add_argument("--test", type=int, default=defaults.test, help="test records per task")
    synthetic.add_argument("--base", type=int, default=defaults.base, help="records of the base-training mixture")
    synthetic.add_argument("--seed", type=int, default=defaults.seed)
    synthetic.add_argument("--long", action="store_true",
                           help="the long stream's twelve training tasks (configs/benchmark/synthetic_long.yaml)")
    synthetic.set_defaults(func=cmd_make_synthetic)
    base = sub.add_parser("base-train", help="base-train the tiny model on the synthetic base mixture")
    base.add_argument("--model", required=True, help="tiny model folder")
    base.add_argument("--data", required=True, help="synthetic benchmark root")
    base.add_argument("--out", required=True, help="output model folder")
    base.add_argument("--steps", type=int, help="optimizer steps on the mixture (default: base_train's)")
    base.add_argument("--align-steps", type=int, help="optimizer steps on CLEAR scenes first (default: base_train's)")
    base.add_argument("--lr", type=float)
    base.add_argument("--batch-size", type=int)
    base.add_argument("--seed", type=int)
    base.add_argument("--family", choices=("llava", "qwen2_vl"), default="llava")
    base.add_argument("--train-vision", action="store_true",
                      help="train the vision tower too (one not perception-pretrained; default: kept frozen)")
    base.set_defaults(func=cmd_base_train)
    analyze = sub.add_parser("analyze", help="analyses of a finished run").add_subparsers(
        dest="analysis", required=True)
    cka = analyze.add_parser("cka", help="layer-wise linear CKA between the adapters trained on each task")
    cka.add_argument("run_dir", help="a run directory with at least two completed stages")
    cka.add_argument("--samples", type=int, default=16, help="probe records per trained task (first test records)")
    cka.set_defaults(func=cmd_analyze_cka)
    plan = sub.add_parser("plan", help="each method's adapter parameters and peak GPU memory (no GPU, no weights)")
    add_config_args(plan)
    plan.add_argument("--methods", metavar="A,B", help="names of configs/method/*.yaml (default: the config's own "
                      "method if it sets one, else every method config)")
    plan.add_argument("--tasks", type=int, metavar="N", help="stream length (default: the benchmark's)")
    plan.add_argument("--configs", default="configs", help="the configs folder (methods, shipped architectures)")
    plan.set_defaults(func=cmd_plan)
    demo = sub.add_parser("demo", help="methods on the synthetic stream, side by side (zero-shot, SeqLoRA, joint)")
    demo.add_argument("--methods", nargs="+", metavar="METHOD",
                      help="names of configs/method/*.yaml to run and compare (default: zeroshot seqlora joint)")
    demo.add_argument("--templates", default="single", choices=("single", "multi"),
                      help="instruction-template variant of every task (multi: runs named demo-<method>-multi)")
    demo.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                      help="overrides, each applied to the methods whose config has the key's parent")
    demo.add_argument("--work", default="work", help="folder for the model, data and runs")
    demo.add_argument("--configs", default="configs", help="the configs folder")
    demo.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    demo.set_defaults(func=cmd_demo)
    world = sub.add_parser("world", help="the embedded world: build its base, check it, calibrate it").add_subparsers(
        dest="world_command", required=True)
    build = world.add_parser("build", help="base-train the tiny model from scratch and commit its weights "
                             "(cvit/synthetic/base/)")
    build.add_argument("--work", default="work/world-build", help="folder for the benchmark and the training")
    build.set_defaults(func=cmd_world_build)
    check = world.add_parser("check", help="build the world under two CPU capabilities and two thread counts and "
                             "compare zero-shot and SeqLoRA")
    check.add_argument("--work", default="work/world-check", help="a folder per setting goes here")
    check.add_argument("--configs", default="configs", help="the configs folder")
    check.add_argument("--out", default="results", help="folder for world-check.md")
    check.set_defaults(func=cmd_world_check)
    calibration = world.add_parser("calibration", help="the world's quantities against the real regime's "
                                   "(zero-shot, SeqLoRA and joint runs): results/calibration.md")
    calibration.add_argument("--work", default="work", help="folder for the model, data and runs")
    calibration.add_argument("--configs", default="configs", help="the configs folder")
    calibration.add_argument("--out", default="results", help="folder for calibration.md")
    calibration.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    calibration.set_defaults(func=cmd_world_calibration)
    probe = world.add_parser("probe", help="what a base model sees, asked in its own wording: colour and kind of a "
                             "shape, clear and hard scenes; the box of one of two shapes")
    probe.add_argument("model", help="base model folder, e.g. work/tiny-llava-base")
    probe.set_defaults(func=cmd_world_probe)
    assemble = sub.add_parser("assemble-llava", help="a Hugging Face LLaVA folder from a Vicuna folder, LLaVA's "
                              "stage-1 mm_projector.bin and a CLIP folder (the papers' starting point)")
    assemble.add_argument("--llm", required=True, help="the Vicuna (Llama) model folder")
    assemble.add_argument("--projector", required=True, help="LLaVA's stage-1 mm_projector.bin")
    assemble.add_argument("--vision", required=True, help="the CLIP model folder, e.g. clip-vit-large-patch14-336")
    assemble.add_argument("--out", required=True, help="the new LLaVA folder (must not hold files)")
    assemble.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                          help="the weights' dtype in the new folder")
    assemble.add_argument("--seed", type=int, default=0, help="seed of the new tokens' embedding rows")
    assemble.set_defaults(func=cmd_assemble_llava)
    results = sub.add_parser("results", help="every method and baseline on the synthetic stream: results/synthetic.md")
    results.add_argument("--work", default="work", help="folder for the model, data and runs")
    results.add_argument("--configs", default="configs", help="the configs folder")
    results.add_argument("--out", default="results", help="folder for synthetic.md and its plots")
    results.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    results.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], metavar="SEED",
                         help="seeds of SeqLoRA, joint and the four papers' methods (the others run at the first)")
    results.add_argument("--composed", action="store_true",
                         help="the composed methods beside their parts, at the first seed: results/composed/")
    results.set_defaults(func=cmd_results)
    return parser


def quiet_libraries() -> None:
    """Keep progress bars and results on screen; drop the libraries' per-fit banners and tips."""
    # child loggers: Lightning resets the level of "lightning.pytorch" itself when it is imported
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        args.func(args)
    except CvitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
