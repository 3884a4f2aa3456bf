"""``xner``: the command line. Each subcommand parses, then calls one library function.

Errors end a command with one line on stderr -- ``xner label: error: ...`` -- and exit 2 for
a bad command line or config (including inputs or models that do not exist), 1 when the work
itself fails; ``--debug`` (or ``XNER_DEBUG=1``) adds the traceback. Flags are never
abbreviated: an unknown flag names the nearest one.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional, Sequence


from xner_ray.console import (HelpFormatter, XnerParser, corrupt_input,  # noqa: F401
                              error_line, root_cause, run_command)


# --- commands -------------------------------------------------------------------------------

def _check(problems: list[str]) -> None:
    from xner_ray.config import ConfigError

    if problems:
        raise ConfigError(problems[0] + (f" (and {len(problems) - 1} more)"
                                         if len(problems) > 1 else ""))


def _cmd_model(args: argparse.Namespace) -> int:
    from xner_ray.models.builtin import builtin_model_path

    print(builtin_model_path(args.name))
    return 0


def _cmd_train_teacher(args: argparse.Namespace) -> int:
    from xner_ray import config
    from xner_ray.cluster import init_ray
    from xner_ray.jobs import input_specs, prepare
    from xner_ray.train.teacher import TeacherConfig, train_teacher

    cfg = config.from_args(TeacherConfig, args, config.load_file(args.config))
    code = prepare(cfg, args)
    if code is not None:
        return code
    args._inputs = input_specs(config.resolved(cfg))
    init_ray(args.address)
    out = train_teacher(cfg)
    print(json.dumps({"model": str(out)}))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from xner_ray.evaluate import evaluate_model
    from xner_ray.jobs import check_input, check_model

    _check([p for p in (check_model(args.model), check_input(args.data)) if p])
    args._inputs = [args.data]
    result = evaluate_model(args.model, args.data, lang=args.lang, batch_size=args.batch_size,
                            device=args.device, label_map=args.label_map)
    per_type = result.pop("per_type")
    for name, m in sorted(per_type.items()):
        print(f"{name:>8}  P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}  "
              f"support {m['support']}")
    result["per_type"] = per_type
    print(json.dumps(result))  # the last line is one JSON object (contract)
    return 0


def _label_values(args: argparse.Namespace) -> dict:
    from xner_ray import config

    values = config.load_file(args.config)
    if args.model:
        values["teachers"] = args.model
    if args.input:
        langs = args.lang or []
        if len(langs) not in (1, len(args.input)):
            raise config.ConfigError(f"give one --lang for all inputs or one per --input "
                                     f"({len(args.input)} inputs, {len(langs)} langs)")
        langs = langs * len(args.input) if len(langs) == 1 else langs
        values["inputs"] = [{"path": p, "lang": l, "fmt": args.format, "gold": args.gold}
                            for p, l in zip(args.input, langs)]
    for key in ("store", "round", "selector", "run_id", "student", "batch_size", "num_actors",
                "lang_scorers", "combine"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    for item in args.set:
        config.set_value(values, item)
    return values


def _cmd_label(args: argparse.Namespace) -> int:
    import dataclasses

    from xner_ray import config
    from xner_ray.cluster import init_ray
    from xner_ray.jobs import input_specs, prepare
    from xner_ray.labeling.pipeline import LabelConfig, label

    values = _label_values(args)
    if args.allow_empty and "allow_empty" in {f.name for f in dataclasses.fields(LabelConfig)}:
        values["allow_empty"] = True
    cfg = config.build(LabelConfig, values)
    code = prepare(cfg, args)
    if code is not None:
        return code
    args._inputs = input_specs(config.resolved(cfg))
    init_ray(args.address)
    summary = label(cfg)
    print(json.dumps({"run_id": cfg.run_id, "round": cfg.round, "store": cfg.store,
                      "languages": summary}))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from xner_ray.demo import run_demo

    run_demo(args.out, address=args.address)
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    """``-v``/``--debug`` after the subcommand too (``xner label ... --debug``)."""
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="INFO logs of other libraries (Ray, transformers) too")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="tracebacks and DEBUG logs (also XNER_DEBUG=1)")


def build_parser() -> argparse.ArgumentParser:
    from xner_ray import config
    from xner_ray.jobs import add_job_parsers
    from xner_ray.train.teacher import TeacherConfig

    p = XnerParser(prog="xner", description="xner_ray: cross-lingual NER pseudo-labeling and "
                   "distillation on Ray.")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="INFO logs of other libraries (Ray, transformers) too")
    p.add_argument("--debug", action="store_true", help="tracebacks and DEBUG logs "
                                                        "(also XNER_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=XnerParser)

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        q = sub.add_parser(name, **kw)
        _add_common(q)
        return q

    m = add("model", help="embedded models")
    m.add_argument("kind", choices=["builtin"])
    m.add_argument("name", choices=["me5-small"])
    m.set_defaults(func=_cmd_model)

    t = add("train-teacher", help="fine-tune a teacher with Ray Train")
    t.add_argument("--config", help="YAML/JSON file with TeacherConfig keys (flags override)")
    t.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    t.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, check inputs and model, and exit")
    config.add_dataclass_args(t, TeacherConfig, defaults_none=True)
    t.set_defaults(func=_cmd_train_teacher)

    e = add("evaluate", help="seqeval entity P/R/F1 of a model on a CoNLL file")
    e.add_argument("--model", required=True, help="model folder (or HF name)")
    e.add_argument("--data", required=True, help="CoNLL file(s)")
    e.add_argument("--lang", help="language code reported with the scores")
    e.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass")
    e.add_argument("--device", help="cpu / cuda (default: cuda if available)")
    e.add_argument("--label-map", help="map gold labels first, e.g. 'drop:DATE'")
    e.set_defaults(func=_cmd_evaluate)

    lb = add("label", help="stream text through teacher(s) into the store (Ray Data)")
    lb.add_argument("--config", help="YAML/JSON file with LabelConfig keys (flags override)")
    lb.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a LabelConfig key (converted to its type)")
    lb.add_argument("--model", action="append", help="teacher model folder (repeat: ensemble)")
    lb.add_argument("--input", action="append", help="input file/dir/glob (repeatable)")
    lb.add_argument("--lang", action="append", help="language of the inputs (one, or one each)")
    lb.add_argument("--format", default="auto", choices=["auto", "text", "jsonl", "conll"],
                    help="input format")
    lb.add_argument("--gold", action="store_true",
                    help="keep the input's tags as gold_tags (evaluation only)")
    lb.add_argument("--store", help="store root folder")
    lb.add_argument("--round", type=int, help="round number (default 0)")
    lb.add_argument("--selector", help="e.g. keep_all, confidence:0.9, top_rho:confidence:0.8, "
                    "lang_score:0.8 (AdvPicker, needs --lang-scorer)")
    lb.add_argument("--run-id", dest="run_id", help="default: hash of teachers + inputs")
    lb.add_argument("--student", help="student model: fills the agreement column")
    lb.add_argument("--lang-scorer", dest="lang_scorers", action="append",
                    help="TLADV teacher folder whose discriminator fills lang_score (repeat: "
                         "one per seed; AdvPicker)")
    lb.add_argument("--combine", choices=["mean", "best_confidence"],
                    help="ensemble: mean (default) or best_confidence (AdvPicker seed ensemble)")
    lb.add_argument("--batch-size", dest="batch_size", type=int, help="sentences per forward")
    lb.add_argument("--num-actors", dest="num_actors", type=int, help="teacher actors")
    lb.add_argument("--allow-empty", action="store_true",
                    help="accept empty input files (default: an error)")
    lb.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    lb.add_argument("--dry-run", action="store_true",
                    help="print the resolved config, check inputs and models, and exit")
    lb.set_defaults(func=_cmd_label)

    d = add("demo", help="train and evaluate on the bundled sample (a few minutes)")
    d.add_argument("--out", default="outputs/demo", help="output folder")
    d.add_argument("--address", help="Ray cluster address (default: local)")
    d.set_defaults(func=_cmd_demo)

    from xner_ray.report import add_report_parser
    from xner_ray.sqlshell import add_sql_parser

    from xner_ray.store.check import add_store_parser

    for q in (add_sql_parser(sub), add_report_parser(sub), *add_store_parser(sub)):
        _add_common(q)
    add_job_parsers(sub)
    for name in _job_names():
        _add_common(sub.choices[name])
    return p


def _job_names() -> list[str]:
    from xner_ray.jobs import JOBS

    return list(JOBS)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from xner_ray import logs

    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(verbose=args.verbose, debug=args.debug)
    return run_command(f"xner {args.command}", args.func, args, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
