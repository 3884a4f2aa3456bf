"""Student distillation from the store's pseudo-labels, on Ray Train.

The training set of a (run, language, round) is the committed ``pseudo_labels`` rows joined to
their ``sentences`` (selected rows only, by default), exported once with DuckDB to one Parquet
file and fed to the workers through Ray Data. The student starts from the pre-trained encoder
(not the teacher) and learns the teacher's soft labels with the token-level MSE (TSL Eq. 3,
RIKD Eq. 1); model selection uses the source-language dev set only (zero-shot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xner_ray.train.loop import TrainConfig, fit, read_labeled


@dataclass(kw_only=True)
class DistillConfig(TrainConfig):
    """Student distillation settings (papers: lr 1e-4 for students, batch 32, 3 epochs,
    embeddings + bottom 3 layers frozen)."""

    store: str = field(metadata={"help": "store holding the pseudo-labels"})
    run_id: str = field(metadata={"help": "run whose pseudo-labels to learn"})
    lang: str = field(metadata={"help": "target language"})
    dev: str = field(metadata={"help": "SOURCE-language dev CoNLL file (model selection)"})
    round: int = field(default=0, metadata={"help": "round of the pseudo-labels"})
    selected_only: bool = field(default=True, metadata={"help": "train on selected rows only"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.round < 0:
            raise ValueError(f"round must be >= 0, got {self.round}")


def committed_round(store_root: str, run_id: str, lang: str, round: int
                    ) -> tuple[dict[str, list[str]], list[str]]:
    """The files ({table: paths}) and label set of a committed round -- never a partial one."""
    from xner_ray.store import Store

    store = Store(store_root)
    manifest = store.manifest(run_id, lang, round)
    if manifest is None:
        raise ValueError(f"no complete round {round} for run {run_id!r}, language {lang!r} in "
                         f"{store_root}; complete rounds: {store.complete_rounds(run_id, lang)}")
    files = {t: [f"{store.root}/{f}" for f in manifest["tables"][t]["files"]]
             for t in ("sentences", "pseudo_labels")}
    return files, manifest["labels"]


def export_training_set(files: dict[str, list[str]], dest: Path, *,
                        selected_only: bool = True) -> int:
    """Write the (sent_id, tokens, probs, weight) training rows of a round to ``dest``.

    ``files`` holds the round's ``sentences`` and ``pseudo_labels`` Parquet files (committed,
    or those of a round still being written). Duplicate sentences share a sent_id and identical
    tokens, so the sentence side is de-duplicated before the join. Returns the row count.
    """
    import duckdb

    if not files.get("pseudo_labels"):
        raise ValueError("the round has no pseudo-labels")
    where = "WHERE p.selected AND p.weight > 0" if selected_only else ""
    weight = "p.weight" if selected_only else "1.0"
    con = duckdb.connect()
    con.execute(f"""
        COPY (
          SELECT p.sent_id, s.tokens, p.probs, {weight}::FLOAT AS weight
          FROM read_parquet($pl) p
          JOIN (SELECT DISTINCT ON (sent_id) sent_id, tokens FROM read_parquet($se)) s
            USING (sent_id)
          {where}
          ORDER BY p.sent_id  -- a join's output order is not fixed: same rows, same batches
        ) TO '{dest}' (FORMAT parquet)""", {"pl": files["pseudo_labels"], "se": files["sentences"]})
    n = con.execute("SELECT count(*) FROM read_parquet($d)", {"d": str(dest)}).fetchone()[0]
    if n == 0:
        raise ValueError("the round has no selected pseudo-labels to learn from")
    return n


def distill(cfg: DistillConfig) -> Path:
    """Train one student for ``cfg.lang`` on round ``cfg.round``; returns its folder."""
    import ray

    from xner_ray.train.steps import KDStep

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "train_set.parquet"
    files, labels = committed_round(cfg.store, cfg.run_id, cfg.lang, cfg.round)
    n = export_training_set(files, data, selected_only=cfg.selected_only)
    dev, dev_rej = read_labeled(cfg.dev, "source dev")
    unknown = sorted({t for s in dev for t in s.tags} - set(labels))
    if unknown:
        raise ValueError(f"source dev tags {unknown} are not in the pseudo-labels' set {labels}")
    ds = ray.data.read_parquet(str(data), num_cpus=0.25)  # light reads beside the workers
    try:
        return fit(cfg, step=KDStep, labels=labels, dataset=ds, n_train=n, dev=dev,
                   name=f"student-{cfg.lang}",
                   extra_summary={"source": {"run_id": cfg.run_id, "lang": cfg.lang,
                                             "round": cfg.round}})
    finally:
        data.unlink(missing_ok=True)
