"""Student distillation from the store's pseudo-labels, on Ray Train.

The training set of a (run, language, round) is read by Ray Data tasks straight from the
round's files: each task reads one ``pseudo_labels`` file and the ``sentences`` file it was
labeled from -- written with it (same rows, same order), or, in a later round of a run, the
stored round-0 file it labeled again, joined by sent_id (``store.sink.pair_files``) -- keeps
the selected rows (a whole-set selector's decision is re-applied from its cut-offs, recorded
in the manifest), and Ray Train's workers take their shards of that stream. No export to a
driver's disk, no global join; store paths may be URIs (``s3://``). The student starts from the
pre-trained encoder (not the teacher) and learns the teacher's soft labels with the token-level
MSE (TSL Eq. 3, RIKD Eq. 1); model selection uses the source-language dev set only
(zero-shot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

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
    calibrated: bool = field(default=False, metadata={
        "help": "learn the round's calibrated tags (its `calibrations` table, CalibreNet): a "
                "word whose tag the calibration changed gets a one-hot target"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.round < 0:
            raise ValueError(f"round must be >= 0, got {self.round}")



TRAIN_BLOCK_ROWS = 1024


def committed_round(store_root: str, run_id: str, lang: str, round: int) -> dict:
    """The manifest of a committed round -- never a partial one."""
    from xner_ray.store import Store

    store = Store(store_root)
    manifest = store.manifest(run_id, lang, round)
    if manifest is None:
        raise ValueError(f"no complete round {round} for run {run_id!r}, language {lang!r} in "
                         f"{store_root}; complete rounds: {store.complete_rounds(run_id, lang)}")
    return manifest


def round_pairs(store, manifest: dict) -> list[tuple[str, str]]:
    """(sentences, pseudo_labels) file pairs of a committed round (``store.sink.pair_files``).
    A round that labeled an earlier round's stored sentences (manifest meta
    ``sentences_round``) pairs its files with that round's sentences files."""
    from xner_ray.store.sink import pair_files

    files = {t: [store.path(f) for f in v["files"]] for t, v in manifest["tables"].items()}
    src = manifest.get("meta", {}).get("sentences_round")
    sentences = files.get("sentences", [])
    if src is not None:
        earlier = committed_round(store.uri, manifest["run_id"], manifest["lang"], src)
        sentences = [store.path(f) for f in earlier["tables"]["sentences"]["files"]]
    return pair_files(sentences, files.get("pseudo_labels", []))


def tokens_of(se, pl, where: str):
    """The ``tokens`` of ``pl``'s rows, in its order, from the sentences table ``se``: the same
    rows in the same order (a round's own files), or a superset in any order (the stored
    sentences an earlier round wrote) joined by ``sent_id`` -- equal ids have equal tokens, as
    the id is a hash of language and tokens."""
    import pyarrow.compute as pc

    if se.num_rows == pl.num_rows and se.column("sent_id").equals(pl.column("sent_id")):
        return se.column("tokens")
    idx = pc.index_in(pl.column("sent_id"), value_set=se.column("sent_id"))
    if idx.null_count:
        raise ValueError(f"{where}: {idx.null_count} pseudo-labels have no sentence of their "
                         "sent_id in the sentences file they were labeled from")
    return se.column("tokens").take(idx)


def round_selector(meta: dict, key: str = "selector"):
    """The fitted whole-set selector of a round (from its manifest meta), or None; ``key``
    ``calib_selector``: the selection by calibration score (``methods.calibrenet``)."""
    spec, cutoffs = meta.get(f"{key}_spec"), meta.get(f"{key}_cutoffs")
    if not spec or cutoffs is None:
        return None
    from xner_ray.selectors import make_selector

    selector = make_selector(spec)
    selector.set_cutoffs([tuple(c) for c in cutoffs])
    return selector


def training_dataset(store, pairs: list[tuple[str, str]], *, selector=None,
                     selected_only: bool = True, calibrations: Optional[list[str]] = None,
                     labels: Optional[list[str]] = None, calib_selector=None):
    """A Ray dataset of (sent_id, tokens, probs, weight) read by tasks from the file pairs.

    ``calibrations``: the round's ``calibrations`` files (with ``labels``, the round's label
    set): the students then learn the calibrated tags (:func:`calibrated_probs`);
    ``calib_selector``: the round's fitted selection by calibration score, re-applied."""
    from functools import partial

    from xner_ray import engine

    if not pairs:
        raise ValueError("the round has no pseudo-labels")
    if calibrations is not None and not labels:
        raise ValueError("calibrated training needs the round's labels")
    items = [(store.to_uri(a), store.to_uri(b)) for a, b in pairs]
    calib = None if calibrations is None else [store.to_uri(c) for c in calibrations]
    if calib_selector is not None and not calib:
        raise ValueError("selection by calibration score needs the round's calibrations")
    return engine.dataset(items, partial(read_training_pair, selector=selector,
                                         selected_only=selected_only, calibrations=calib,
                                         labels=labels, calib_selector=calib_selector))


def calibrated_probs(probs: list, tags: Sequence[str], labels: Sequence[str]) -> list:
    """A sentence's soft labels after calibration: every word whose calibrated tag is not the
    teacher's most probable label gets a one-hot target on the calibrated tag; the others keep
    the teacher's distribution. CalibreNet (Sec. 3.1) outputs hard spans, not a distribution:
    this is how its corrections enter the soft-label losses (TSL Eq. 3, RIKD Eq. 1) -- our
    combination, no paper trains a student on calibrated pseudo-labels."""
    index = {l: i for i, l in enumerate(labels)}
    if len(tags) != len(probs):
        raise ValueError(f"{len(tags)} calibrated tags for {len(probs)} words")
    out = []
    for p, tag in zip(probs, tags):
        i = index.get(tag)
        if i is None:
            raise ValueError(f"calibrated tag {tag!r} is not in the round's labels {labels}")
        if max(range(len(p)), key=p.__getitem__) == i:
            out.append(p)
        else:
            out.append([1.0 if k == i else 0.0 for k in range(len(p))])
    return out


def _calibrations_of(uris: list[str], sent_ids, *, scores: bool = False):
    """The calibrations rows of ``sent_ids``: only those the calibration changed
    (``n_changed > 0``; the others keep the teacher's labels) unless ``scores`` asks for every
    row's ``calib_score`` too."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from xner_ray.store.sink import split_uri

    fs, _ = split_uri(uris[0])
    paths = [split_uri(u)[1] for u in uris]
    ds = pads.dataset(paths, filesystem=fs, format="parquet")
    cols = ["sent_id", "calib_tags", "n_changed"] + (["calib_score"] if scores else [])
    table = ds.to_table(columns=cols, filter=None if scores else pc.field("n_changed") > 0)
    return table.filter(pc.is_in(table.column("sent_id"), value_set=sent_ids))


def read_training_pair(item: tuple[str, str], *, selector=None, selected_only: bool = True,
                       calibrations: Optional[list[str]] = None,
                       labels: Optional[list[str]] = None, calib_selector=None):
    """One read task: the training rows of a (sentences, pseudo_labels) file pair, with the
    calibrated tags of ``calibrations`` applied when given (and, with ``calib_selector``,
    only the rows it keeps by calibration score)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from xner_ray.store.sink import split_uri

    (fs, se_path), (_, pl_path) = split_uri(item[0]), split_uri(item[1])
    se = pq.read_table(se_path, filesystem=fs, columns=["sent_id", "tokens"])
    cols = ["sent_id", "probs", "selected", "weight"]
    if selector is not None:
        cols += [c for c in selector.rank_columns if c not in cols]
    pl = pq.read_table(pl_path, filesystem=fs, columns=cols)
    tokens = tokens_of(se, pl, f"{item[1]} (sentences {item[0]})")
    if selector is not None:
        pl = selector(pl)
    probs = pl.column("probs")
    calib_keep = None
    if calibrations:  # (float32 throughout, so every block of the dataset has one schema)
        probs = probs.cast(pa.list_(pa.list_(pa.float32())))
        calib = _calibrations_of(calibrations, pl.column("sent_id"),
                                 scores=calib_selector is not None)
        if calib_selector is not None:
            kept = set(calib_selector(calib.select(["sent_id", "calib_score"]))
                       .filter(pc.field("selected")).column("sent_id").to_pylist())
            calib_keep = pa.array([sid in kept for sid in pl.column("sent_id").to_pylist()])
        changed = {sid: tags for sid, tags, n in zip(calib.column("sent_id").to_pylist(),
                                                    calib.column("calib_tags").to_pylist(),
                                                    calib.column("n_changed").to_pylist())
                   if n > 0}
        if changed:
            rows = probs.to_pylist()
            for k, sid in enumerate(pl.column("sent_id").to_pylist()):
                if sid in changed:
                    rows[k] = calibrated_probs(rows[k], changed[sid], labels)
            probs = pa.array(rows, probs.type)
    table = pa.table({"sent_id": pl.column("sent_id"), "tokens": tokens,
                      "probs": probs, "weight": pl.column("weight").cast(pa.float32())})
    if selected_only:
        keep = pc.and_(pl.column("selected"), pc.greater(pl.column("weight"), 0))
        if calib_keep is not None:
            keep = pc.and_(keep, calib_keep)
        table = table.filter(keep)
    else:
        table = table.set_column(3, "weight", pa.array([1.0] * table.num_rows, pa.float32()))
    for start in range(0, table.num_rows, TRAIN_BLOCK_ROWS):
        yield table.slice(start, TRAIN_BLOCK_ROWS)


def distill(cfg: DistillConfig) -> Path:
    """Train one student for ``cfg.lang`` on round ``cfg.round``; returns its folder."""
    from xner_ray.store import Store
    from xner_ray.train.steps import KDStep

    store = Store(cfg.store)
    manifest = committed_round(cfg.store, cfg.run_id, cfg.lang, cfg.round)
    labels = manifest["labels"]
    files = {t: [store.path(f) for f in v["files"]] for t, v in manifest["tables"].items()}
    selector = round_selector(manifest.get("meta", {}))
    counts = manifest.get("meta", {}).get("counts", {})
    calibrations = None
    if cfg.calibrated:
        calibrations = files.get("calibrations")
        if not calibrations:
            raise ValueError(f"calibrated: true, but round {cfg.round} of {cfg.run_id}/{cfg.lang} "
                             "has no calibrations (label it with a `calibrator`)")
    ds = training_dataset(store, round_pairs(store, manifest), selector=selector,
                          selected_only=cfg.selected_only, calibrations=calibrations,
                          labels=labels, calib_selector=(
                              round_selector(manifest.get("meta", {}), "calib_selector")
                              if cfg.calibrated else None))
    n = (counts.get("selected") if cfg.selected_only else counts.get("sentences"))
    if n is None:
        n = ds.count()  # a round committed without counts: one distributed pass
    if n == 0:
        raise ValueError("the round has no selected pseudo-labels to learn from")
    dev, dev_rej = read_labeled(cfg.dev, "source dev")
    unknown = sorted({t for s in dev for t in s.tags} - set(labels))
    if unknown:
        raise ValueError(f"source dev tags {unknown} are not in the pseudo-labels' set {labels}")
    return fit(cfg, step=KDStep, labels=labels, dataset=ds, n_train=n, dev=dev,
               name=f"student-{cfg.lang}",
               extra_summary={"source": {"run_id": cfg.run_id, "lang": cfg.lang,
                                         "round": cfg.round, "calibrated": cfg.calibrated}})
