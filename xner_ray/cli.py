"""``xner``: the command line. Each subcommand parses, then calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence


def _cmd_model(args: argparse.Namespace) -> int:
    from xner_ray.models.builtin import builtin_model_path

    print(builtin_model_path(args.name))
    return 0


def _cmd_train_teacher(args: argparse.Namespace) -> int:
    from xner_ray import config
    from xner_ray.cluster import init_ray
    from xner_ray.train.teacher import TeacherConfig, train_teacher

    cfg = config.from_args(TeacherConfig, args, config.load_file(args.config))
    if args.dry_run:
        print(config.dump(cfg))
        return 0
    init_ray(args.address)
    out = train_teacher(cfg)
    print(json.dumps({"model": str(out)}))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from xner_ray.evaluate import evaluate_model

    result = evaluate_model(args.model, args.data, lang=args.lang, batch_size=args.batch_size,
                            device=args.device, label_map=args.label_map)
    per_type = result.pop("per_type")
    for name, m in sorted(per_type.items()):
        print(f"{name:>8}  P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}  "
              f"support {m['support']}")
    result["per_type"] = per_type
    print(json.dumps(result))  # the last line is one JSON object (contract)
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    from xner_ray import config
    from xner_ray.cluster import init_ray
    from xner_ray.labeling.pipeline import LabelConfig, label

    values = config.load_file(args.config)
    if args.model:
        values["teachers"] = args.model
    if args.input:
        langs = args.lang or []
        if len(langs) not in (1, len(args.input)):
            raise ValueError(f"give one --lang for all inputs or one per --input "
                             f"({len(args.input)} inputs, {len(langs)} langs)")
        langs = langs * len(args.input) if len(langs) == 1 else langs
        values["inputs"] = [{"path": p, "lang": l, "fmt": args.format, "gold": args.gold}
                            for p, l in zip(args.input, langs)]
    for key in ("store", "round", "selector", "run_id", "student", "batch_size", "num_actors",
                "lang_scorers", "combine"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    cfg = config.build(LabelConfig, values)
    if args.dry_run:
        print(config.dump(cfg))
        return 0
    init_ray(args.address)
    summary = label(cfg)
    print(json.dumps({"run_id": cfg.run_id, "round": cfg.round, "store": cfg.store,
                      "languages": summary}))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from xner_ray.demo import run_demo

    run_demo(args.out, address=args.address)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from xner_ray import config
    from xner_ray.train.teacher import TeacherConfig

    p = argparse.ArgumentParser(prog="xner", description="xner_ray: cross-lingual NER "
                                "pseudo-labeling and distillation on Ray.")
    p.add_argument("-v", "--verbose", action="store_true", help="INFO-level logs")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("model", help="embedded models")
    m.add_argument("kind", choices=["builtin"])
    m.add_argument("name", choices=["me5-small"])
    m.set_defaults(func=_cmd_model)

    t = sub.add_parser("train-teacher", help="fine-tune a teacher with Ray Train")
    t.add_argument("--config", help="YAML/JSON file with TeacherConfig keys (flags override)")
    t.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    config.add_dataclass_args(t, TeacherConfig, defaults_none=True)
    t.set_defaults(func=_cmd_train_teacher)

    e = sub.add_parser("evaluate", help="seqeval entity P/R/F1 of a model on a CoNLL file")
    e.add_argument("--model", required=True, help="model folder (or HF name)")
    e.add_argument("--data", required=True, help="CoNLL file(s)")
    e.add_argument("--lang", help="language code reported with the scores")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", help="cpu / cuda (default: cuda if available)")
    e.add_argument("--label-map", help="map gold labels first, e.g. 'drop:DATE'")
    e.set_defaults(func=_cmd_evaluate)

    lb = sub.add_parser("label", help="stream text through teacher(s) into the store (Ray Data)")
    lb.add_argument("--config", help="YAML/JSON file with LabelConfig keys (flags override)")
    lb.add_argument("--model", action="append", help="teacher model folder (repeat: ensemble)")
    lb.add_argument("--input", action="append", help="input file/dir/glob (repeatable)")
    lb.add_argument("--lang", action="append", help="language of the inputs (one, or one each)")
    lb.add_argument("--format", default="auto", choices=["auto", "text", "jsonl", "conll"])
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
    lb.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    lb.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    lb.set_defaults(func=_cmd_label)

    d = sub.add_parser("demo", help="train and evaluate on the bundled sample (a few minutes)")
    d.add_argument("--out", default="outputs/demo", help="output folder")
    d.add_argument("--address", help="Ray cluster address (default: local)")
    d.set_defaults(func=_cmd_demo)

    from xner_ray.report import add_report_parser
    from xner_ray.sqlshell import add_sql_parser

    add_sql_parser(sub)
    add_report_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input or config: one clear line, no traceback from deep inside.
        print(f"xner {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
