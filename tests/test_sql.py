"""Every file in sql/ on a tiny hand-made store whose answers were worked out by hand.

The store (``build_store``) also serves tests/test_report.py. es round 0 holds one sentence per
error category of boundary_errors.sql; the expected numbers below are counted in the comments.
"""

from __future__ import annotations

import io
import json
import random

import duckdb
import numpy as np
import pytest

from xner_ray import scores, sqlshell
from xner_ray.records import Reject
from xner_ray.selectors import ConfidenceThreshold
from xner_ray.store import Store

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]

# sent_id: (tokens, gold tags or None, round-0 predicted tags, round-0 confidence)
ES = {
    "s1": ("Juan vive en Madrid .", "B-PER O O B-LOC O", "B-PER O O B-LOC O", 0.92),  # 2 exact
    "s2": ("La ONU y Ana Pérez", "O B-ORG O B-PER I-PER", "O B-LOC O B-PER O", 0.42),  # type, sub
    "s3": ("Banco de España abre", "B-ORG I-ORG I-ORG O", "B-ORG I-ORG O O", 0.77),  # sub
    "s4": ("Hola", None, "B-MISC", 0.56),  # no gold: left out of P/R/F1
    "s5": ("el presidente Obama habló", "O O B-PER O", "O B-PER I-PER O", 0.88),  # super
    "s6": ("en Nueva York City hoy", "O B-LOC I-LOC O O", "O O B-LOC I-LOC O", 0.31),  # drifted
    "s7": ("Rey Felipe VI dijo", "O B-PER I-PER O", "O O O B-PER", 0.97),  # adjacent
    # spurious MISC [0,1); orphan I-ORG is no entity (strict); both gold spans missed
    "s8": ("ayer Lima ganó Perú", "O B-LOC O B-ORG", "B-MISC O O I-ORG", 0.12),
    "s9": ("la Casa Blanca dijo", "O B-LOC I-LOC O", "O B-ORG O O", 0.66),  # type_boundary
}
ES_ROUND1 = {"s1": ("B-PER O O B-ORG O", 0.95), "s2": ("O B-ORG O B-PER I-PER", 0.70),
             "s3": ("B-ORG I-ORG I-ORG O", 0.50)}
NL = {"n1": ("Jan woont in Gent", None, "B-PER O O B-LOC", 0.81), "n2": ("Hallo", None, "O", 0.99)}
THRESHOLD = 0.6  # selects s1 s3 s5 s7 s9 (es r0), s1 s2 (es r1), n1 n2


def _probs(tags: list[str], conf: float) -> np.ndarray:
    """Soft labels whose top probability is ``conf`` on each predicted tag (RIKD Eq. 5 = conf)."""
    p = np.full((len(tags), len(LABELS)), (1 - conf) / (len(LABELS) - 1), dtype=np.float32)
    p[np.arange(len(tags)), [LABELS.index(t) for t in tags]] = conf
    return p


def pseudo_batch(rows: dict[str, tuple[str, float]], teacher: str) -> dict:
    ids = list(rows)
    tags = [rows[i][0].split() for i in ids]
    probs = [_probs(t, rows[i][1]) for t, i in zip(tags, ids)]
    batch = {"sent_id": ids, "teacher": [teacher] * len(ids), "tags": tags,
             "probs": np.array(probs + [None], dtype=object)[:-1],
             **scores.score_batch(probs, tags, LABELS)}
    return ConfidenceThreshold(THRESHOLD)(batch)


def _sentences(data: dict) -> list[dict]:
    return [{"sent_id": k, "source": "hand", "tokens": v[0].split(),
             "gold_tags": v[1].split() if v[1] else None} for k, v in data.items()]


def build_store(root) -> Store:
    store = Store(root)
    store.record_run("r1", "rikd", {"rounds": 2, "langs": ["es", "nl"]})
    with store.round_writer("r1", "es", 0, labels=LABELS) as w:
        w.write_sentences(_sentences(ES))
        w.write_pseudo_labels(pseudo_batch({k: (v[2], v[3]) for k, v in ES.items()}, "t@0"))
        w.write_rejects([Reject("f1.txt", 7, "malformed_line", "b b"),
                         Reject("f1.txt", 3, "malformed_line", "a a"),
                         Reject("f2.txt", 1, "invalid_bio", "x B-PER")])
        w.write_projections([
            {"pair_id": "p1", "src_tokens": ["John"], "tgt_tokens": ["Juan"],
             "src_entities": [{"start": 0, "end": 1, "type": "PER"}],
             "tgt_spans": [{"start": 0, "end": 1, "type": "PER", "score": 0.9}],
             "alignment_score": 0.9, "status": "ok"},
            {"pair_id": "p2", "src_tokens": ["in", "Paris"], "tgt_tokens": ["en", "París"],
             "src_entities": [{"start": 1, "end": 2, "type": "LOC"}],
             "tgt_spans": [{"start": 1, "end": 2, "type": "LOC", "score": 0.7}],
             "alignment_score": 0.7, "status": "ok"},
            {"pair_id": "p3", "src_tokens": ["IBM"], "tgt_tokens": ["eso"],
             "src_entities": [{"start": 0, "end": 1, "type": "ORG"}], "tgt_spans": [],
             "alignment_score": 0.1, "status": "unmapped"}])
    with store.round_writer("r1", "es", 1, labels=LABELS) as w:
        w.write_pseudo_labels(pseudo_batch(ES_ROUND1, "t@1"))
    with store.round_writer("r1", "nl", 0, labels=LABELS) as w:
        w.write_sentences(_sentences(NL))
        w.write_pseudo_labels(pseudo_batch({k: (v[2], v[3]) for k, v in NL.items()}, "t@0"))
        w.write_rejects([Reject("nl.txt", 2, "empty_sentence", "")])
    store.update_run("r1", round=0, metrics={"f1": 0.5})
    store.update_run("r1", status="succeeded")
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return build_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module", params=["read_only", "plain_duckdb"])
def con(request, store):
    """Each question runs twice: through sqlshell.connect (read-only, Arrow views) and through
    plain DuckDB with sql/setup/views.sql and a `store` variable, as a user without the package."""
    if request.param == "read_only":
        return sqlshell.connect(store.root)
    con = duckdb.connect()
    con.execute("SET VARIABLE store = ?", [store.root])
    for st in con.extract_statements((sqlshell.sql_dir() / "setup" / "views.sql").read_text()):
        con.execute(st.query)
    return con


def q(con, name: str, **params) -> list[dict]:
    for k in ("round_a", "round_b", "top_k", "run_id", "lang"):
        con.execute(f"RESET VARIABLE {k}")
    return sqlshell.run_sql(con, name, params, output="arrow").to_pylist()


def by(rows, *keys):
    return {tuple(r[k] for k in keys): r for r in rows}


def test_views_file_is_generated():
    assert (sqlshell.sql_dir() / "setup" / "views.sql").read_text() == sqlshell.views_sql()


def test_every_question_has_a_header_and_a_test():
    files = sqlshell.sql_files()
    for name, path in files.items():
        text = path.read_text()
        assert text.startswith("-- Question:") and "-- Output columns:" in text, name
    tested = {"sentences_entities", "label_distribution", "confidence_histogram",
              "selection_summary", "top_entities", "label_flips", "pseudo_label_prf",
              "boundary_errors", "rejects_per_reason", "projection_status", "runs_overview",
              "policy_auc",
              "boundary_ops",  # tests/test_calibrenet_garble.py
              "calibration_errors", "calibration_summary", "round_scores"}
    assert set(files) == tested


def test_sentences_entities(con):
    rows = by(q(con, "sentences_entities"), "lang", "round")
    es0 = rows[("es", 0)]
    # words 5+5+4+1+4+5+4+4+4; entities = B- tags: 2+2+1+1+1+1+1+1+1
    assert (es0["sentences"], es0["words"], es0["entities"]) == (9, 36, 11)
    assert (es0["selected_sentences"], es0["selected_entities"], es0["input_sentences"]) == (
        5, 6, 9)
    assert (rows[("es", 1)]["sentences"], rows[("es", 1)]["input_sentences"]) == (3, 0)
    assert rows[("nl", 0)]["entities"] == 2


def test_label_distribution(con):
    rows = by(q(con, "label_distribution"), "lang", "round", "tag")
    o = rows[("es", 0, "O")]  # 36 words, 21 of them O; selected rows: 21 words, 13 O
    assert (o["words"], o["share"], o["selected_words"]) == (21, pytest.approx(21 / 36), 13)
    assert o["selected_share"] == pytest.approx(13 / 21)
    assert rows[("es", 0, "I-ORG")]["words"] == 2  # s3 and the orphan in s8
    assert rows[("es", 0, "B-MISC")]["selected_words"] == 0


def test_confidence_histogram(con):
    rows = q(con, "confidence_histogram")
    assert len(rows) == 20 * 3  # every bin of es/0, es/1, nl/0
    es0 = {r["bin"]: (r["sentences"], r["selected"]) for r in rows
           if (r["lang"], r["round"]) == ("es", 0) and r["sentences"]}
    assert es0 == {18: (1, 1), 8: (1, 0), 15: (1, 1), 11: (1, 0), 17: (1, 1), 6: (1, 0),
                   19: (1, 1), 2: (1, 0), 13: (1, 1)}
    assert rows[0]["bin_lo"] == 0 and rows[19]["bin_hi"] == pytest.approx(1.0)


def test_selection_summary(con):
    rows = by(q(con, "selection_summary"), "lang", "round", "selected")
    kept, dropped = rows[("es", 0, True)], rows[("es", 0, False)]
    assert (kept["sentences"], dropped["sentences"]) == (5, 4)
    assert kept["share"] == pytest.approx(5 / 9)
    assert kept["selector"] == "confidence.v1(threshold=0.6)"
    assert kept["avg_confidence"] == pytest.approx((0.92 + 0.77 + 0.88 + 0.97 + 0.66) / 5,
                                                   abs=1e-6)
    assert dropped["avg_confidence"] == pytest.approx((0.42 + 0.56 + 0.31 + 0.12) / 4, abs=1e-6)
    assert kept["avg_agreement"] is None
    assert ("nl", 0, False) not in rows


def test_top_entities(con):
    rows = by(q(con, "top_entities"), "lang", "round", "type", "entity")
    assert rows[("es", 0, "PER", "presidente Obama")]["predictions"] == 1
    assert rows[("es", 0, "ORG", "Banco de")]["selected_predictions"] == 1
    assert ("es", 0, "ORG", "Perú") not in rows  # orphan I-ORG is no entity
    assert {k[3] for k in rows if k[:3] == ("es", 0, "PER")} == {
        "Juan", "Ana", "presidente Obama", "dijo"}
    assert ("es", 1, "ORG", "Banco de España") in rows  # round 1 joins round-0 sentences
    top1 = q(con, "top_entities", top_k=1)
    assert all(r["rank"] == 1 for r in top1)
    assert len(top1) == len({(r["lang"], r["round"], r["type"]) for r in top1})


def test_label_flips(con):
    rows = by(q(con, "label_flips"), "lang", "tag_a", "tag_b")
    assert set(rows) == {("es", "B-LOC", "B-ORG"), ("es", "O", "I-PER"), ("es", "O", "I-ORG")}
    assert rows[("es", "B-LOC", "B-ORG")]["words"] == 2  # s1 Madrid, s2 ONU
    assert rows[("es", "B-LOC", "B-ORG")]["share_of_tag_a"] == 1.0
    assert rows[("es", "O", "I-PER")]["share_of_tag_a"] == pytest.approx(1 / 8)  # 8 O in s1-s3
    assert (rows[("es", "O", "I-PER")]["round_a"], rows[("es", "O", "I-PER")]["round_b"]) == (
        0, 1)
    assert q(con, "label_flips", round_a=1, round_b=1) == []
    assert len(q(con, "label_flips", round_a=1, round_b=0)) == 3


EXPECTED_PRF = {  # (gold, pred, correct): selected s1 s3 s5 s7 s9; other s2 s6 s8
    "selected": (6, 6, 2), "other": (5, 4, 0), "all": (11, 10, 2)}


def test_pseudo_label_prf(con):
    rows = by(q(con, "pseudo_label_prf"), "lang", "round", "bucket")
    assert {k for k in rows} == {("es", 0, b) for b in EXPECTED_PRF} | {
        ("es", 1, b) for b in ("selected", "other", "all")}
    for bucket, (g, p, c) in EXPECTED_PRF.items():
        r = rows[("es", 0, bucket)]
        assert (r["gold_entities"], r["pred_entities"], r["correct"]) == (g, p, c)
    allr = rows[("es", 0, "all")]
    assert (allr["precision"], allr["recall"]) == (pytest.approx(0.2), pytest.approx(2 / 11))
    assert allr["f1"] == pytest.approx(4 / 21)
    assert rows[("es", 0, "other")]["f1"] == 0
    # round 1: s2, s3 equal gold; s1 has ORG for the gold LOC -> gold 5, pred 5, correct 4
    assert rows[("es", 1, "all")]["f1"] == pytest.approx(0.8)


def test_pseudo_label_prf_and_policy_auc_take_run_and_language_parameters(con):
    """``run_id`` / ``lang`` keep one run's and one language's rows; unset, every row."""
    every = q(con, "pseudo_label_prf")
    assert {r["lang"] for r in q(con, "pseudo_label_prf", lang="es")} == {"es"}
    assert q(con, "pseudo_label_prf", lang="es") == [r for r in every if r["lang"] == "es"]
    assert q(con, "pseudo_label_prf", lang="nl") == []  # nl has no gold here
    runs = {r["run_id"] for r in every}
    for run in runs:
        assert q(con, "pseudo_label_prf", run_id=run) == [r for r in every if r["run_id"] == run]
    assert q(con, "pseudo_label_prf", run_id="no-such-run") == []
    assert q(con, "policy_auc", run_id="no-such-run") == []
    assert q(con, "pseudo_label_prf") == every  # q resets them: unset again


def test_pseudo_label_prf_matches_seqeval(con):
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    gold = [ES[k][1].split() for k in ES if ES[k][1]]
    pred = [ES[k][2].split() for k in ES if ES[k][1]]
    row = by(q(con, "pseudo_label_prf"), "lang", "round", "bucket")[("es", 0, "all")]
    kw = dict(mode="strict", scheme=IOB2)
    assert row["precision"] == pytest.approx(precision_score(gold, pred, **kw))
    assert row["recall"] == pytest.approx(recall_score(gold, pred, **kw))
    assert row["f1"] == pytest.approx(f1_score(gold, pred, **kw))


def test_bio_spans_matches_seqeval_on_random_tags():
    """Random (often invalid) tag sequences: the SQL macro and seqeval strict agree."""
    from seqeval.scheme import IOB2, Entities

    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    seqs = [[rng.choice(tags) for _ in range(rng.randint(0, 9))] for _ in range(300)]
    con = sqlshell.connect(Store("/nonexistent-store-root"))
    got = [[(s["start"], s["end"], s["type"]) for s in con.execute(
        "SELECT bio_spans(?::VARCHAR[])", [t]).fetchone()[0]] for t in seqs]
    want = [[(e.start, e.end, e.tag) for e in ents]
            for ents in Entities(seqs, IOB2, suffix=False).entities]
    assert got == want


def test_boundary_errors(con):
    rows = {r["category"]: r for r in q(con, "boundary_errors") if r["lang"] == "es"
            and r["round"] == 0}
    counts = {k: r["errors"] for k, r in rows.items()}
    assert counts == {"type": 1, "sub": 2, "super": 1, "drifted": 1, "adjacent": 1,
                      "type_boundary": 1, "spurious": 1, "missed": 2}
    assert rows["sub"]["share"] == pytest.approx(2 / 10)
    assert {k for k, r in rows.items() if r["boundary"]} == {"super", "sub", "drifted",
                                                              "adjacent"}


def test_rejects_per_reason(con):
    rows = by(q(con, "rejects_per_reason"), "lang", "reason")
    m = rows[("es", "malformed_line")]
    assert (m["rejects"], m["files"], m["example_path"], m["example_line"], m["example_raw"]) \
        == (2, 1, "f1.txt", 3, "a a")
    assert rows[("es", "invalid_bio")]["rejects"] == 1
    assert rows[("nl", "empty_sentence")]["rejects"] == 1


def test_projection_status(con):
    rows = by(q(con, "projection_status"), "lang", "status")
    assert (rows[("es", "ok")]["pairs"], rows[("es", "unmapped")]["pairs"]) == (2, 1)
    assert rows[("es", "ok")]["avg_alignment_score"] == pytest.approx(0.8, abs=1e-6)
    assert rows[("es", "unmapped")]["projected_spans"] == 0


def test_runs_overview(con):
    (run,) = q(con, "runs_overview")
    assert (run["run_id"], run["job"], run["status"], run["rounds_with_metrics"]) == (
        "r1", "rikd", "succeeded", 1)
    assert run["seconds"] >= 0 and json.loads(run["metrics"]) == {"0": {"f1": 0.5}}


def test_read_only_connection_refuses_writes(store, tmp_path):
    con = sqlshell.connect(store.root)
    target = tmp_path / "out.parquet"
    for stmt in [f"COPY (SELECT * FROM pseudo_labels) TO '{target}'",
                 f"COPY pseudo_labels TO '{store.root}/pseudo_labels/x.parquet'",
                 f"ATTACH '{tmp_path / 'x.db'}' AS x",
                 "SET enable_external_access = true",
                 "SET lock_configuration = false",
                 "SELECT * FROM read_csv('/etc/hostname')"]:
        with pytest.raises(duckdb.Error):
            con.execute(stmt)
    with pytest.raises(duckdb.Error):
        con.execute("INSERT INTO pseudo_labels SELECT * FROM pseudo_labels")
    assert not target.exists() and not (tmp_path / "x.db").exists()
    assert con.execute("SELECT count(*) FROM pseudo_labels").fetchone() == (14,)


def test_views_have_the_same_types_both_ways(store):
    ro = sqlshell.connect(store.root)
    rw = sqlshell.connect(store.root, read_only=False)
    for view in sqlshell.VIEWS:
        assert ro.execute(f"DESCRIBE {view}").fetchall() == rw.execute(
            f"DESCRIBE {view}").fetchall(), view


def test_cli_formats_and_files(store, capsys):
    assert sqlshell.main_sql(["--store", store.root, "--format", "json",
                              "SELECT lang, count(*) AS n FROM pseudo_labels GROUP BY 1 "
                              "ORDER BY 1"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"lang": "es", "n": 12}, {"lang": "nl", "n": 2}]
    assert sqlshell.main_sql(["--store", store.root, "--file", "rejects_per_reason",
                              "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("run_id,lang,round,reason,rejects") and len(out) == 4
    path = sqlshell.sql_dir() / "label_flips.sql"
    assert sqlshell.main_sql(["--store", store.root, "-f", str(path), "-p", "round_a=1",
                              "-p", "round_b=0", "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert sqlshell.main_sql(["--store", store.root, "SELECT * FROM nope"]) == 1
    with pytest.raises(FileNotFoundError, match="pseudo_label_prf"):
        sqlshell.main_sql(["--store", store.root, "--file", "no_such_question"])


def test_interactive_shell(store, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(
        ".tables\nSELECT count(*) AS n\n  FROM sentences;\nSELECT nope;\n.quit\nSELECT 1;\n"))
    assert sqlshell.main_sql(["--store", store.root, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "pseudo_labels" in out and "n\n11" in out and "error:" in out
    assert out.count("\n1\n") == 0  # nothing after .quit ran


def test_cli_plugs_into_xner(store, capsys):
    from xner_ray.cli import main

    assert main(["sql", "--store", store.root, "--format", "csv",
                 "SELECT count(*) AS n FROM runs"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", "1"]


@pytest.mark.slow
def test_wheel_ships_the_sql_questions(tmp_path):
    """`pip install xner_ray` (no repo beside it) still finds every question: setup.py copies
    the top-level sql/ into the wheel as xner_ray/_sql, and sql_dir() falls back to it."""
    import subprocess
    import sys
    import zipfile

    repo = sqlshell.Path(sqlshell.__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(repo)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("xner_ray-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    shipped = {p.relative_to(tmp_path / "site" / "xner_ray" / "_sql").as_posix()
               for p in (tmp_path / "site" / "xner_ray" / "_sql").rglob("*.sql")}
    expected = {p.relative_to(repo / "sql").as_posix() for p in (repo / "sql").rglob("*.sql")}
    assert shipped == expected and "setup/views.sql" in shipped
    found = subprocess.run(
        [sys.executable, "-c", "from xner_ray import sqlshell; print(sqlshell.sql_dir()); "
                               "print(sorted(sqlshell.sql_files()))"],
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True).stdout.splitlines()
    assert found[0] == str(tmp_path / "site" / "xner_ray" / "_sql")
    assert found[1] == str(sorted(p.stem for p in (repo / "sql").glob("*.sql")))


# -- policy_auc.sql: RIKD's keep probability against pseudo-label correctness -----------------

# sent_id: (tokens, gold tags or None, pseudo-label tags, policy_p or None)
POLICY = {
    "c1": ("Ana vive", "B-PER O", "B-PER O", 0.9),          # correct
    "c2": ("en Lima", "O B-LOC", "O B-LOC", 0.6),           # correct
    "c3": ("hoy no", "O O", "O O", 0.6),                    # correct
    "w1": ("la ONU", "O B-ORG", "O B-LOC", 0.6),            # wrong type
    "w2": ("Juan Pérez", "B-PER I-PER", "B-PER O", 0.3),    # wrong boundary
    "w3": ("en Roma", "O B-LOC", "O O", 0.1),               # missed
    "g0": ("Hola", None, "O", 0.99),                        # no gold: left out
    "n0": ("y Ana", "O B-PER", "O O", None),                # never decided: left out
}


def test_policy_auc_against_a_hand_computation(tmp_path):
    store = Store(tmp_path / "store")
    store.record_run("rk", "rikd", {"rounds": 2})
    rows = {k: (v[2], 0.8) for k, v in POLICY.items()}
    with store.round_writer("rk", "es", 0, labels=LABELS) as w:
        w.write_sentences(_sentences({k: v[:2] for k, v in POLICY.items()}))
        batch = pseudo_batch(rows, "t@0")
        batch["policy_p"] = np.array([POLICY[k][3] for k in batch["sent_id"]], dtype=object)
        w.write_pseudo_labels(batch)
    with store.round_writer("rk", "es", 1, labels=LABELS) as w:  # every decided one correct
        batch = pseudo_batch({"c1": ("B-PER O", 0.9), "c2": ("O B-LOC", 0.9)}, "t@1")
        batch["policy_p"] = np.array([0.2, 0.7], dtype=object)
        w.write_pseudo_labels(batch)
    store.update_run("rk", status="succeeded")
    got = {r["round"]: r for r in sqlshell.run_sql(sqlshell.connect(store.root), "policy_auc",
                                                    {}, output="arrow").to_pylist()}
    assert set(got) == {0, 1}
    r0 = got[0]
    assert (r0["run_id"], r0["lang"], r0["sentences"], r0["correct"], r0["wrong"]) == (
        "rk", "es", 6, 3, 3)
    # 9 (correct, wrong) pairs: 0.9 beats all 3; each 0.6 beats 0.3 and 0.1 and ties 0.6 (1/2)
    assert r0["auc"] == pytest.approx((3 + 2.5 + 2.5) / 9)
    assert r0["mean_p_correct"] == pytest.approx(0.7, rel=1e-6)
    assert r0["mean_p_wrong"] == pytest.approx(1.0 / 3, rel=1e-6)
    assert got[1]["auc"] is None and got[1]["wrong"] == 0
    # the same AUC as a pairwise count over random scores with ties
    rng = np.random.default_rng(0)
    p, ok = rng.choice([0.1, 0.5, 0.9], 40), rng.random(40) < 0.5
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in p[ok] for b in p[~ok]]
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT unnest(?) AS policy_p, unnest(?) AS ok",
                [p.tolist(), ok.tolist()])
    sql = (sqlshell.sql_dir() / "policy_auc.sql").read_text()
    ranked = sql[sql.index("ranked AS ("):sql.index("counts AS (")].rstrip().rstrip(",")
    auc = con.execute(
        "WITH scored AS (SELECT 'r' AS run_id, 'x' AS lang, 0 AS round, * FROM t), "
        + ranked + " SELECT (sum(r) FILTER (WHERE ok) - count(*) FILTER (WHERE ok) * "
        "(count(*) FILTER (WHERE ok) + 1) / 2.0) / (count(*) FILTER (WHERE ok) * "
        "count(*) FILTER (WHERE NOT ok)) FROM ranked").fetchone()[0]
    assert auc == pytest.approx(sum(pairs) / len(pairs))


# -- CalibreNet: the calibrations table -----------------------------------------------------------
# es round-0 base tags (ES[k][2]) and hand-made calibrated tags: s2's sub span (Ana), s3's sub,
# s5's super are fixed; s7's adjacent span becomes a sub span; s9's type_boundary span gets
# the gold boundaries with the wrong type; s6 and s8 are left as they were.
CALIB_ES = {"s1": "B-PER O O B-LOC O", "s2": "O B-LOC O B-PER I-PER", "s3": "B-ORG I-ORG I-ORG O",
            "s4": "B-MISC", "s5": "O O B-PER O", "s6": "O O B-LOC I-LOC O", "s7": "O B-PER O O",
            "s8": "B-MISC O O I-ORG", "s9": "O B-ORG I-ORG O"}
CALIB_NL = {"n1": "B-PER O O B-LOC", "n2": "O"}


def _calib_rows(base: dict, calib: dict) -> list[dict]:
    from xner_ray.labels import tags_to_spans

    rows = []
    for k, tags in calib.items():
        orig = base[k].split()
        o = [(s, e, t) for s, e, t in tags_to_spans(orig)]
        c = [(s, e, t) for s, e, t in tags_to_spans(tags.split())]
        rows.append({
            "sent_id": k, "teacher": "t@0", "calibrator": "calibrenet.v1(hand)",
            "orig_tags": orig, "calib_tags": tags.split(),
            "orig_spans": [{"start": s, "end": e, "type": t, "score": 0.9 if k == "s1" else 0.5}
                           for s, e, t in o],
            "calib_spans": [{"start": s, "end": e, "type": t, "score": 0.8} for s, e, t in c],
            "calib_score": 0.8 if c else None,
            "n_changed": sum(x not in c for x in o)})
    return rows


def add_calibrations(store: Store) -> Store:
    """A second run ``c1`` whose rounds hold only ``calibrations`` (gold comes from r1's
    sentences: the join is on lang + sent_id)."""
    with store.round_writer("c1", "es", 0, labels=LABELS) as w:
        w.write("calibrations", _calib_rows({k: v[2] for k, v in ES.items()}, CALIB_ES))
    with store.round_writer("c1", "nl", 0, labels=LABELS) as w:
        w.write("calibrations", _calib_rows({k: v[2] for k, v in NL.items()}, CALIB_NL))
    return store


@pytest.fixture(scope="module", params=["read_only", "plain_duckdb"])
def cal_con(request, tmp_path_factory):
    store = add_calibrations(build_store(tmp_path_factory.mktemp("cal-store")))
    if request.param == "read_only":
        return sqlshell.connect(store.root)
    con = duckdb.connect()
    con.execute("SET VARIABLE store = ?", [store.root])
    for st in con.extract_statements((sqlshell.sql_dir() / "setup" / "views.sql").read_text()):
        con.execute(st.query)
    return con


def test_calibration_errors(cal_con):
    rows = by([r for r in q(cal_con, "calibration_errors") if r["run_id"] == "c1"],
              "lang", "type", "category")
    got = {k[1:]: (r["before"], r["after"], r["change"]) for k, r in rows.items()}
    assert got == {("LOC", "type"): (1, 1, 0), ("PER", "sub"): (1, 1, 0),  # s2 fixed, s7 new
                   ("ORG", "sub"): (1, 0, -1), ("PER", "super"): (1, 0, -1),
                   ("LOC", "drifted"): (1, 1, 0), ("PER", "adjacent"): (1, 0, -1),
                   ("MISC", "spurious"): (1, 1, 0), ("LOC", "missed"): (1, 1, 0),
                   ("ORG", "missed"): (1, 1, 0), ("ORG", "type_boundary"): (1, 0, -1),
                   ("ORG", "type"): (0, 1, 1)}
    assert {k[0] for k in rows} == {"es"}  # nl has no gold
    assert {k[1:] for k, r in rows.items() if r["boundary"]} == {
        ("PER", "sub"), ("ORG", "sub"), ("PER", "super"), ("LOC", "drifted"), ("PER", "adjacent")}


def test_calibration_errors_before_repeats_boundary_errors(cal_con):
    before: dict = {}
    for r in q(cal_con, "calibration_errors"):
        before[r["category"]] = before.get(r["category"], 0) + r["before"]
    base = {r["category"]: r["errors"] for r in q(cal_con, "boundary_errors")
            if (r["run_id"], r["lang"], r["round"]) == ("r1", "es", 0)}
    assert {k: v for k, v in before.items() if v} == base


def test_calibration_summary(cal_con):
    rows = by(q(cal_con, "calibration_summary"), "run_id", "lang", "round")
    es = rows[("c1", "es", 0)]
    # 12 stored spans: labels.tags_to_spans (which built them) reads s8's orphan I-ORG as a
    # span; bio_spans (strict, the F1 below) does not
    assert (es["sentences"], es["orig_spans"], es["calib_spans"]) == (9, 12, 12)
    assert (es["spans_changed"], es["sentences_changed"]) == (5, 5)  # s2 s3 s5 s7 s9
    assert es["calibrator"] == "calibrenet.v1(hand)"
    assert es["avg_orig_score"] == pytest.approx((0.9 + 8 * 0.5) / 9, abs=1e-6)
    assert es["avg_calib_score"] == pytest.approx(0.8, abs=1e-6)
    # gold: 8 sentences, 11 entities; before 10 predicted, 2 right (= pseudo_label_prf's 4/21);
    # after 10 predicted, 5 right (s1 x2, Ana, Banco de España, Obama)
    assert (es["gold_sentences"], es["gold_entities"]) == (8, 11)
    assert es["f1_before"] == pytest.approx(4 / 21) and es["f1_after"] == pytest.approx(10 / 21)
    nl = rows[("c1", "nl", 0)]
    assert (nl["sentences"], nl["spans_changed"], nl["gold_sentences"]) == (2, 0, 0)
    assert nl["f1_before"] is None and nl["f1_after"] is None
    assert set(rows) == {("c1", "es", 0), ("c1", "nl", 0)}


def test_round_scores_reads_the_jobs_round_summaries(tmp_path):
    from xner_ray.sqlshell import connect, run_sql
    from xner_ray.store import Store

    store = Store(tmp_path / "s")
    store.record_run("r", "rikd", {"x": 1})
    for k, (src, tgt) in enumerate([(0.61, 0.52), (0.63, 0.55)]):
        store.update_run("r", round=k, metrics={"de": {
            "round": k, "teacher": f"t{k}", "student": f"s{k}", "n_train": 300,
            "source_dev_f1": src, "discard_ratio": 0.25, "seconds": 10.0,
            "target_dev": {"f1": tgt, "per_type": {"LOC": 0.6, "PER": 0.5}}}})
    store.record_run("l", "label", {"y": 2})
    store.update_run("l", round=0, metrics={"de": {"sentences": 3}})  # no scores: left out
    rows = run_sql(connect(store.root), "round_scores", output="arrow").to_pylist()
    assert [(r["run_id"], r["round"], r["source_dev_f1"], r["target_dev_f1"], r["student"])
            for r in rows] == [("r", 0, 0.61, 0.52, "s0"), ("r", 1, 0.63, 0.55, "s1")]
    assert '"LOC":0.6' in rows[0]["target_f1_per_type"].replace(" ", "")
