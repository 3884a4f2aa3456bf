"""CalibreNet garbling (Sec. 3.2.2): ops by hand, the sampled distribution, the SQL count."""

from __future__ import annotations

import collections
import random

import duckdb
import pytest

from xner_ray.methods.calibrenet.garble import (
    ADD, DELETE, NOOP, SHIFT, OpDist, apply_op, classify_op, default_op_dist, dist_from_counts,
    dist_from_rows, estimate_op_dist, feasible, garble, match_gold, sample_op, support,
)
from xner_ray.sqlshell import sql_dir


def test_classify_op_by_hand():
    gold = (3, 5)
    assert classify_op((3, 5), gold) == (NOOP, 0)
    assert classify_op((2, 6), gold) == (ADD, 2)  # one word each side
    assert classify_op((3, 7), gold) == (ADD, 2)
    assert classify_op((4, 5), gold) == (DELETE, 1)
    assert classify_op((4, 6), gold) == (SHIFT, 1)  # drifted
    assert classify_op((5, 7), gold) == (SHIFT, 2)  # adjacent: shifted by its length
    assert classify_op((0, 20), gold, max_n=4) == (ADD, 4)  # clipped


def test_match_gold_prefers_exact_then_closest_and_skips_spurious():
    golds = [(0, 2, "PER"), (3, 5, "LOC"), (5, 6, "ORG")]
    assert match_gold((3, 5), golds) == 1
    assert match_gold((4, 6), golds) == 2  # |4-5|+|6-6| = 1 beats |4-3|+|6-5| = 2
    assert match_gold((2, 3), golds) == 0  # touches (0, 2) and (3, 5): both at distance 2 -> left
    assert match_gold((7, 9), golds) is None


def test_apply_op_is_the_inverse_of_classify_op():
    rng = random.Random(0)
    for op in support(4):
        for _ in range(50):
            out = apply_op((10, 15), 40, op, rng)
            assert classify_op(out, (10, 15)) == op
            if op[0] == SHIFT:
                assert out[1] - out[0] == 5  # Shift keeps the length


def test_feasibility_at_sentence_edges():
    assert not feasible((0, 1), 1, (ADD, 1)) and not feasible((0, 1), 1, (DELETE, 1))
    assert not feasible((0, 1), 1, (SHIFT, 1))
    assert feasible((0, 2), 3, (ADD, 1)) and not feasible((0, 2), 3, (ADD, 2))
    with pytest.raises(ValueError):
        apply_op((0, 1), 1, (DELETE, 1), random.Random(0))
    dist = dist_from_counts({(DELETE, 1): 100})
    assert {sample_op(dist, (0, 1), 1, random.Random(i)) for i in range(30)} == {(NOOP, 0)}
    assert all(0 <= s < e <= 3 for s, e in
               (garble((1, 2), 3, default_op_dist(), random.Random(i))[0] for i in range(200)))


def _chi2(observed: collections.Counter, dist: OpDist, n: int) -> float:
    return sum((observed[k] - n * p) ** 2 / (n * p) for k, p in dist.probs.items())


def test_garbled_spans_follow_the_sampled_distribution():
    """Garble one gold span 20,000 times where every op fits, read each result back with
    classify_op, and compare with p by Pearson's chi-square (13 cells, df 12: 32.9 is the
    0.001 critical value). A wrong p must be rejected by the same statistic."""
    counts = {k: 10 + 5 * i for i, k in enumerate(support(4))}
    dist = dist_from_counts(counts, smoothing=0.0)
    rng, n = random.Random(1234), 20_000
    seen = collections.Counter(classify_op(garble((10, 15), 40, dist, rng)[0], (10, 15))
                               for _ in range(n))
    assert _chi2(seen, dist, n) < 32.9
    uniform = dist_from_counts({}, smoothing=1.0)
    assert _chi2(seen, uniform, n) > 200


def test_default_distribution_follows_table1():
    d = default_op_dist()
    assert sum(d.probs.values()) == pytest.approx(1.0)
    assert d.probs[(NOOP, 0)] == pytest.approx((22720 - 548 - 556 - 5 - 1358) / 22720)
    assert sum(p for (op, _), p in d.probs.items() if op == SHIFT) == pytest.approx(1363 / 22720)
    assert d.probs[(ADD, 1)] == pytest.approx(2 * d.probs[(ADD, 2)])
    assert NOOP not in {op for op, _ in d.without_noop().probs}
    assert OpDist.from_json(d.to_json()) == d


def test_estimate_counts_boundary_errors_only():
    preds = [[(0, 2, "PER"), (3, 4, "LOC"), (8, 9, "ORG")], [(1, 3, "LOC")]]
    golds = [[(0, 2, "ORG"), (3, 5, "LOC")], [(2, 4, "LOC")]]
    dist, counts = estimate_op_dist(preds, golds, smoothing=0.5)
    # (0,2) exact boundary (type error) -> noop; (3,4) inside (3,5) -> delete 1;
    # (8,9) spurious -> left out; (1,3) vs (2,4) drifted -> shift 1
    assert counts == {(NOOP, 0): 1, (DELETE, 1): 1, (SHIFT, 1): 1}
    total = 3 + 0.5 * len(support())
    assert dist.probs[(DELETE, 1)] == pytest.approx(1.5 / total)
    assert dist.probs[(ADD, 3)] == pytest.approx(0.5 / total)


def _bio(spans, n):
    from xner_ray.labels import spans_to_tags

    return spans_to_tags(spans, n)


def test_boundary_ops_sql_matches_the_python_estimate():
    """sql/boundary_ops.sql on hand-made sentences/pseudo_labels tables (plain DuckDB with the
    store's bio_spans macro) gives the same (op, n_op) counts as estimate_op_dist."""
    rng = random.Random(7)
    rows_s, rows_p, preds, golds = [], [], [], []
    for i in range(60):
        n = 12
        gold = [(1, 3, "PER"), (6, 9, "LOC")]
        pred = []
        for s, e, t in gold:
            (ps, pe), _ = garble((s, e), n, dist_from_counts({}), rng)
            pred.append((ps, pe, t))
        pred = pred if pred[0][1] <= pred[1][0] else pred[:1]
        if i % 5 == 0:
            pred.append((11, 12, "ORG")) if pred[-1][1] <= 11 else None  # spurious
        gold_tags = _bio(gold, n)
        rows_s.append((f"s{i}", "en", gold_tags))
        rows_p.append((f"s{i}", "en", 0, "run", _bio(pred, n)))
        preds.append(pred)
        golds.append(gold)
    rows_s.append(("x", "en", None))  # no gold: ignored
    rows_p.append(("x", "en", 0, "run", ["B-PER"]))
    con = duckdb.connect()
    views = (sql_dir() / "setup" / "views.sql").read_text()
    macro = [s.query for s in con.extract_statements(views) if "MACRO bio_spans" in s.query]
    con.execute(macro[0])
    con.execute("CREATE TABLE sentences (sent_id VARCHAR, lang VARCHAR, gold_tags VARCHAR[])")
    con.execute("CREATE TABLE pseudo_labels (sent_id VARCHAR, lang VARCHAR, round INTEGER, "
                "run_id VARCHAR, tags VARCHAR[])")
    con.executemany("INSERT INTO sentences VALUES (?, ?, ?)", rows_s)
    con.executemany("INSERT INTO pseudo_labels VALUES (?, ?, ?, ?, ?)", rows_p)
    cur = con.execute((sql_dir() / "boundary_ops.sql").read_text())
    out = [dict(zip([c[0] for c in cur.description], r)) for r in cur.fetchall()]
    sql_counts = {(r["op"], r["n_op"]): r["spans"] for r in out}
    _, py_counts = estimate_op_dist(preds, golds, max_n=100)
    assert {op for op, _ in sql_counts} == {NOOP, ADD, DELETE, SHIFT}
    assert sql_counts == dict(py_counts)
    assert sum(r["share"] for r in out) == pytest.approx(1.0)
    assert dist_from_rows(out) == estimate_op_dist(preds, golds)[0]
