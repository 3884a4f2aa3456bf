"""Entity projection pieces without Ray: the Sec. 4.3 filters on hand-made pairs, the alignment
example builder, the re-weighted loss, the similarity aligner, pair encoding, corpus reading,
the stages on literal batches, and config validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from xner_ray.demo import sample_path
from xner_ray.methods.projection.filters import (INCONSISTENT, OK, OVERLAP, UNMAPPED, MappedEntity,
                                         TargetSpan, filter_pair, group_entities)


def ent(text, typ, mentions, spans):
    return MappedEntity(text, typ, list(mentions), [TargetSpan(a, b, s) for a, b, s in spans])


# -- filters (Li et al. Sec. 4.3) ------------------------------------------------------------

TGT = "Y Caín habitó en Nod , y Caín vió á Abel".split()  # 11 words


def test_filter_ok_tags_and_repeated_mention():
    # Cain is mentioned twice in the target: both spans carry the same string -> kept
    r = filter_pair(TGT, [ent("Cain", "PER", [(0, 1)], [(1, 2, 0.9), (7, 8, 0.7)]),
                          ent("Nod", "LOC", [(5, 6)], [(4, 5, 0.8)])])
    assert (r.status, r.reason) == (OK, None)
    assert r.tags == ["O", "B-PER", "O", "O", "B-LOC", "O", "O", "B-PER", "O", "O", "O"]
    assert [s[:3] for s in r.spans] == [(1, 2, "PER"), (4, 5, "LOC"), (7, 8, "PER")]
    assert r.score == pytest.approx((0.9 + 0.8 + 0.7) / 3)


def test_filter_pair_without_entities_is_ok_all_outside():
    r = filter_pair(TGT, [])
    assert r.status == OK and r.tags == ["O"] * len(TGT) and r.score is None


def test_filter_unmapped():
    r = filter_pair(TGT, [ent("Cain", "PER", [(0, 1)], [(1, 2, 0.9)]),
                          ent("Enoch", "PER", [(6, 7)], [])])
    assert r.status == UNMAPPED and r.tags is None
    assert "no target span for PER 'Enoch' (source words 6-7)" in r.reason
    assert r.spans == [(1, 2, "PER", 0.9)]  # what was found stays visible


def test_filter_overlap_between_entities():
    r = filter_pair(TGT, [ent("Cain", "PER", [(0, 1)], [(1, 3, 0.9)]),
                          ent("Nod", "LOC", [(5, 6)], [(2, 5, 0.8)])])
    assert r.status == OVERLAP and r.tags is None
    assert "PER 'Cain'" in r.reason and "LOC 'Nod'" in r.reason and "overlaps" in r.reason


def test_filter_same_span_for_two_entities_is_overlap():
    r = filter_pair(TGT, [ent("Cain", "PER", [(0, 1)], [(1, 2, 0.9)]),
                          ent("Cain", "LOC", [(0, 1)], [(1, 2, 0.5)])])
    assert r.status == OVERLAP


def test_filter_inconsistent_strings():
    r = filter_pair(TGT, [ent("Cain", "PER", [(0, 1)], [(1, 2, 0.9), (10, 11, 0.4)])])
    assert r.status == INCONSISTENT and r.tags is None
    assert "'Caín' (1-2)" in r.reason and "'Abel' (10-11)" in r.reason


def test_filter_inconsistent_ignores_case_and_dedupes_identical_spans():
    tokens = "caín y Caín".split()
    r = filter_pair(tokens, [ent("Cain", "PER", [(0, 1), (3, 4)],
                                 [(0, 1, 0.5), (2, 3, 0.6), (2, 3, 0.9)])])
    assert r.status == OK and [s[:2] for s in r.spans] == [(0, 1), (2, 3)]
    assert r.spans[1][3] == pytest.approx(0.9)  # the identical span kept once, best score


def test_filter_same_string_overlapping_places_is_inconsistent():
    r = filter_pair("x x a a a".split(), [ent("aa", "LOC", [(0, 2)], [(2, 4, 1), (3, 5, 1)])])
    assert r.status == INCONSISTENT and "overlapping spans" in r.reason


def test_filter_status_follows_paper_order_and_reason_lists_all():
    r = filter_pair(TGT, [ent("Cain", "PER", [(0, 1)], [(1, 2, 0.9), (10, 11, 0.4)]),
                          ent("Enoch", "PER", [(6, 7)], [])])
    assert r.status == UNMAPPED
    assert "no target span" in r.reason and "different target strings" in r.reason


def test_filter_rejects_spans_outside_the_sentence():
    with pytest.raises(ValueError, match="outside the 11 target words"):
        filter_pair(TGT, [ent("Cain", "PER", [(0, 1)], [(10, 12, 0.9)])])


def test_group_entities_merges_mentions_of_one_name():
    src = "Cain talked with Abel ; Cain rose".split()
    groups = group_entities(src, [(0, 1, "PER"), (3, 4, "PER"), (5, 6, "PER")])
    assert [(g.text, g.type, g.mentions) for g in groups] == [
        ("Cain", "PER", [(0, 1), (5, 6)]), ("Abel", "PER", [(3, 4)])]


# -- alignment examples (Sec. 4.2) -----------------------------------------------------------

def _pairs():
    from xner_ray.methods.projection.examples import PairForExamples

    return [
        # gold link "Pison" -> "era Pisón" (the Bible's links include prefixed words)
        PairForExamples("p1", "The name of the first is Pison".split(),
                        "El nombre del uno era Pisón".split(), links=[(6, 7, 4, 6), (1, 2, 1, 2)]),
        PairForExamples("p2", "And the fourth river is Euphrates".split(),
                        "Y el cuarto río es el Eufrates".split()),
        PairForExamples("p3", "And Adam knew Eve his wife".split(),
                        "Y conoció Adam á su mujer Eva".split(),
                        alignment={(1, 2), (2, 1), (4, 3), (5, 5)}),
        PairForExamples("p4", "And God saw the light".split(), "Y vió Dios la luz".split(),
                        alignment={(1, 2), (2, 1), (4, 4)}),
    ]


def _by(examples, pair_id, negative=False):
    return {" ".join(e.query): e for e in examples if e.pair_id == pair_id and e.negative == negative}


def test_examples_positives_from_each_source():
    from xner_ray.methods.projection.examples import build_examples

    examples, stats = build_examples(_pairs(), negative_ratio=0.0)
    p1 = _by(examples, "p1")
    assert p1["Pison"].tags == ["O"] * 5 + ["B-ALN"]  # trimmed to the name
    assert (p1["Pison"].source, p1["Pison"].kind) == ("gold_links", "name")
    assert p1["name"].tags == ["O", "B-ALN", "O", "O", "O", "O"] and p1["name"].kind == "phrase"
    eu = _by(examples, "p2")["Euphrates"]
    assert (eu.source, eu.tags) == ("identical", ["O"] * 6 + ["B-ALN"])
    p3 = _by(examples, "p3")
    assert p3["Adam"].source == "identical"  # identical wins over simalign for the same query
    assert stats["duplicate_query:simalign"] >= 1
    assert p3["wife"].source == "simalign" and p3["wife"].tags[5] == "B-ALN"
    p4 = _by(examples, "p4")
    assert p4["God"].tags == ["O", "O", "B-ALN", "O", "O"] and p4["God"].source == "simalign"
    assert p4["light"].kind == "phrase" and p4["light"].tags[4] == "B-ALN"
    assert not any(e.negative for e in examples)


def test_examples_negative_ratio_and_absence():
    from xner_ray.methods.projection.examples import build_examples

    pairs = _pairs()
    examples, stats = build_examples(pairs, negative_ratio=0.25, seed=3)
    pos = [e for e in examples if not e.negative]
    neg = [e for e in examples if e.negative]
    assert len(neg) == round(len(pos) / 3)  # 25% of all examples
    assert len(neg) / len(examples) == pytest.approx(0.25, abs=0.05)
    src = {p.pair_id: [w.casefold() for w in p.src_tokens] for p in pairs}
    pos_queries = {(" ".join(e.query), e.source) for e in pos}
    for e in neg:
        assert set(e.tags) == {"O"}  # nothing to find: the model must read the query
        assert " ".join(e.query).casefold() not in " ".join(src[e.pair_id])
        assert (" ".join(e.query), e.source) in pos_queries  # borrowed, with its source
        assert e.tokens == next(p.tgt_tokens for p in pairs if p.pair_id == e.pair_id)


def test_examples_sources_subset_cap_and_bad_options():
    from xner_ray.methods.projection.examples import build_examples

    examples, _ = build_examples(_pairs(), sources=["identical"], negative_ratio=0.0)
    assert {e.source for e in examples} == {"identical"}
    capped, stats = build_examples(_pairs(), negative_ratio=0.0, max_per_pair=1)
    assert len(capped) == 4 and stats["capped"] > 0
    assert _by(capped, "p1").keys() == {"Pison"}  # names first
    with pytest.raises(ValueError, match="unknown example sources"):
        build_examples(_pairs(), sources=["wikipedia"])
    with pytest.raises(ValueError, match="negative_ratio"):
        build_examples(_pairs(), negative_ratio=1.0)


def test_identical_ambiguous_target_word_is_dropped():
    from xner_ray.methods.projection.examples import PairForExamples, identical_candidates

    pair = PairForExamples("x", "Abram and Abraham".split(), "Abram y otro".split())
    assert identical_candidates(pair) == []  # 'Abram' claimed by two source strings


# -- the re-weighted loss (Sec. 4.3) ---------------------------------------------------------

def test_reverse_focal_loss_hand_computed_and_gamma0_is_cross_entropy():
    from xner_ray.train.losses import reverse_focal_loss

    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]]]))
    labels = torch.tensor([[0, 0, -100]])  # p_t = 0.5 and 0.1; the third is ignored
    expected = -((1.5 ** 4) * math.log(0.5) + (1.1 ** 4) * math.log(0.1)) / 2
    assert reverse_focal_loss(logits, labels, 4.0).item() == pytest.approx(expected, rel=1e-5)
    ce = torch.nn.functional.cross_entropy(logits.view(-1, 3), labels.view(-1))
    assert reverse_focal_loss(logits, labels, 0.0).item() == pytest.approx(ce.item(), rel=1e-6)


def test_reverse_focal_loss_weights_confident_tokens_more_and_edge_cases():
    from xner_ray.train.losses import reverse_focal_loss

    logits = torch.randn(2, 5, 4, requires_grad=True)
    labels = torch.randint(0, 4, (2, 5))
    rw = reverse_focal_loss(logits, labels, 4.0)
    ce = reverse_focal_loss(logits, labels, 0.0)
    assert rw.item() > ce.item()  # every weight is >= 1
    rw.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    none = reverse_focal_loss(logits, torch.full((2, 5), -100), 4.0)
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="gamma"):
        reverse_focal_loss(logits, labels, -1.0)


# -- the similarity aligner ----------------------------------------------------------------------

def test_argmax_and_itermax_on_hand_made_similarities():
    from xner_ray.methods.projection.aligner import argmax_align, itermax_align

    sim = np.array([[0.9, 0.1, 0.2, 0.1],
                    [0.8, 0.3, 0.1, 0.2],   # wants column 0 too, but row 0 owns it
                    [0.1, 0.2, 0.7, 0.6]])
    a = argmax_align(sim)
    assert {tuple(x) for x in np.argwhere(a)} == {(0, 0), (2, 2)}
    it = itermax_align(sim, max_iter=2, alpha=0.9)
    # round 2 weights: row 1 is free (x0.9 to aligned columns, x1 to free ones), rows 0 and 2
    # only see the free columns 1 and 3 (x0.9). Row 1: [0.72, 0.3, 0.09, 0.2] -> column 0,
    # whose weighted column is [0, 0.72, 0] -> mutual: (1, 0) joins although column 0 was taken.
    # Row 2: [0, 0.18, 0, 0.54] -> column 3, whose column [0.09, 0.2, 0.54] -> (2, 3).
    assert {tuple(x) for x in np.argwhere(it)} == {(0, 0), (2, 2), (1, 0), (2, 3)}
    assert it[a].all()  # itermax only adds to argmax


def test_spans_from_words_merges_gaps_and_trims_punctuation():
    from xner_ray.methods.projection.aligner import spans_from_words

    tokens = ["el", "Nuevo", ",", "York", ".", "y", "Roma"]
    assert spans_from_words([1, 3, 6], tokens, max_gap=1) == [(1, 4), (6, 7)]
    assert spans_from_words([1, 3], tokens, max_gap=0) == [(1, 2), (3, 4)]
    assert spans_from_words([2, 4], tokens) == []  # punctuation only


def test_similarity_aligner_on_a_known_pair():
    """The embedded model at SimAlign's layer 8 on a Bible verse with an unambiguous gold
    alignment of its names and content words."""
    from xner_ray.methods.projection.aligner import SimilarityAligner
    from xner_ray.methods.projection.filters import group_entities

    src = ("And the name of the second river is Gihon : the same is it that compasseth the "
           "whole land of Ethiopia .").split()
    tgt = "El nombre del segundo río es Gihón : éste es el que rodea toda la tierra de Etiopía .".split()
    aligner = SimilarityAligner("builtin:me5-small", layer=8, method="argmax", threads=1)
    pairs = {(src[i], tgt[j]) for i, j in aligner.align([src], [tgt])[0].pairs}
    for gold in [("Gihon", "Gihón"), ("Ethiopia", "Etiopía"), ("river", "río"),
                 ("second", "segundo"), ("name", "nombre"), ("land", "tierra")]:
        assert gold in pairs
    groups = [group_entities(src, [(8, 9, "LOC"), (20, 21, "LOC")])]
    aligner.project([src], [tgt], groups)
    assert [[(s.start, s.end) for s in g.spans] for g in groups[0]] == [[(6, 7)], [(17, 18)]]
    assert all(0.5 < s.score <= 1.0 for g in groups[0] for s in g.spans)


def test_similarity_aligner_rejects_bad_layer_and_method(tiny_model_dir):
    from xner_ray.methods.projection.aligner import SimilarityAligner

    with pytest.raises(ValueError, match="layer must be in 1..2"):
        SimilarityAligner(str(tiny_model_dir), layer=8)
    with pytest.raises(ValueError, match="unknown alignment method"):
        SimilarityAligner(str(tiny_model_dir), layer=1, method="mwmf")


# -- the alignment model's input ---------------------------------------------------------------

def test_encode_pairs_labels_only_target_first_subwords(tiny_model_dir):
    from xner_ray.models.classifier import load_tokenizer
    from xner_ray.methods.projection.examples import ALIGN_LABELS
    from xner_ray.methods.projection.model import encode_pairs

    tok = load_tokenizer(str(tiny_model_dir))
    label2id = {l: i for i, l in enumerate(ALIGN_LABELS)}
    query, words = ["Berlin", "Wall"], ["Die", "Berliner", "Mauer", "fiel"]
    batch = encode_pairs(tok, [query], [words], [["O", "B-ALN", "I-ALN", "O"]], label2id)
    enc = tok([query], [words], is_split_into_words=True)
    seq = enc.sequence_ids(0)
    labelled = (batch.labels[0] != -100).nonzero().flatten().tolist()
    assert len(labelled) == 4 and all(seq[j] == 1 for j in labelled)  # never on the query
    assert batch.labels[0, labelled].tolist() == [0, 1, 2, 0]
    assert batch.first_subword[0].tolist() == labelled
    # truncation cuts the target, never the query
    cut = encode_pairs(tok, [query], [words * 40], max_length=16)
    assert (cut.first_subword[0] == -1).sum() > 0
    ids = cut.inputs["input_ids"][0].tolist()
    assert tok.convert_ids_to_tokens(ids)[1:1 + len(tok.tokenize("Berlin Wall"))] == tok.tokenize(
        "Berlin Wall")


# -- corpus reading ------------------------------------------------------------------------------

def test_read_bundled_bible_with_links():
    from xner_ray.methods.projection.corpus import ParallelSpec, read_corpus

    spec = ParallelSpec(lang="es", path=str(sample_path()),
                        links=str(sample_path("bible.links.jsonl")), limit=5)
    (table,) = list(read_corpus(spec, max_words=2048, rows_per_block=10, with_links=True))
    assert table.num_rows == 5 and table.column("lang").to_pylist() == ["es"] * 5
    row = table.to_pylist()[0]
    assert row["ref"] == "Genesis 1:1" and row["src_tokens"][:3] == ["In", "the", "beginning"]
    # Strong's link "beginning" (chars 7-16) -> "EN el principio" (chars 0-15)
    assert {"src_start": 2, "src_end": 3, "tgt_start": 0, "tgt_end": 3} in row["links"]


def test_links_with_a_wrong_id_reject_the_pair(tmp_path):
    from xner_ray.io import ParallelLengthError
    from xner_ray.methods.projection.corpus import ParallelSpec, check_corpus, read_corpus

    (tmp_path / "c.en-es.en").write_text("God made Adam .\nAdam knew Eve .\n")
    (tmp_path / "c.en-es.es").write_text("Dios hizo á Adam .\nAdam conoció á Eva .\n")
    (tmp_path / "c.en-es.ids").write_text("Gen 1\nGen 2\n")
    links = tmp_path / "links.jsonl"
    links.write_text(json.dumps({"id": "Gen 1", "links": [{"src": [9, 13], "tgt": [13, 17]}]})
                     + "\n" + json.dumps({"id": "Gen 9", "links": []}) + "\n")
    spec = ParallelSpec(lang="es", path=str(tmp_path / "c"), links=str(links))
    check_corpus(spec)
    calls = []
    tables = list(read_corpus(spec, max_words=50, rows_per_block=10, with_links=True,
                              rejects=lambda *args: calls.append(args)))
    assert sum(t.num_rows for t in tables) == 1
    assert tables[0].column("links").to_pylist() == [[{"src_start": 2, "src_end": 3,
                                                       "tgt_start": 3, "tgt_end": 4}]]
    (lang, path, sink), = calls
    assert (lang, path) == ("es", spec.path) and dict(sink.counts) == {"misaligned_pair": 1}
    assert "'Gen 9' but the pair is 'Gen 2'" in sink.rejects[0].detail
    with pytest.raises(RuntimeError, match="nowhere to write rejects"):
        list(read_corpus(spec, max_words=50, rows_per_block=10, with_links=True))
    links.write_text("{}\n")
    with pytest.raises(ParallelLengthError, match="1 lines but the corpus"):
        check_corpus(spec)


def test_corpus_spec_validation():
    from xner_ray.methods.projection.corpus import ParallelSpec, parse_corpora

    with pytest.raises(ValueError, match="unknown corpus keys"):
        ParallelSpec.parse({"lang": "es", "path": "x", "dev_file": "y"})
    with pytest.raises(ValueError, match="fmt must be one of"):
        ParallelSpec(lang="es", path="x", fmt="xml")
    with pytest.raises(ValueError, match="target languages repeat"):
        parse_corpora([{"lang": "es", "path": "a"}, {"lang": "es", "path": "b"}])
    with pytest.raises(ValueError, match="TSV corpus cannot have"):
        ParallelSpec(lang="es", path="x.tsv", fmt="tsv", links="l.jsonl")


# -- stages on literal batches -------------------------------------------------------------------

def _pair_table(rows):
    from xner_ray.methods.projection.corpus import PAIR_COLUMNS

    return pa.Table.from_pylist([{"pair_id": f"p{i}", "lang": "es", "src_lang": "en", "ref": None,
                                  "source": "hand", "line": i + 1, "src_tokens": s.split(),
                                  "tgt_tokens": t.split(), "links": None}
                                 for i, (s, t) in enumerate(rows)], schema=PAIR_COLUMNS)


def test_source_ner_and_align_stages(tiny_teacher_dir, tiny_model_dir):
    from xner_ray.methods.projection.stages import AlignStage, SourceNerStage
    from xner_ray.store.schema import PROJECTION_STATUSES

    table = _pair_table([("John lives in Berlin", "Juan vive en Berlín"),
                         ("Hello", "Hola")])
    ner = SourceNerStage(str(tiny_teacher_dir), threads=1)(table)
    assert ner.num_rows == 2 and "src_entities" in ner.column_names
    # overwrite the (untrained) teacher's entities with known ones
    ents = pa.array([[{"start": 0, "end": 1, "type": "PER"}, {"start": 3, "end": 4, "type": "LOC"}],
                     []], ner.schema.field("src_entities").type)
    ner = ner.set_column(ner.schema.get_field_index("src_entities"), "src_entities", ents)
    out = AlignStage({"kind": "similarity", "model": str(tiny_model_dir), "layer": 2},
                     threads=1)(ner)
    rows = out.to_pylist()
    assert all(r["status"] in PROJECTION_STATUSES for r in rows)
    assert rows[1]["status"] == "ok" and rows[1]["tgt_tags"] == ["O"]
    assert rows[1]["alignment_score"] is None and rows[0]["aligner"].startswith("simalign.v1(")
    if rows[0]["status"] == "ok":
        assert len(rows[0]["tgt_tags"]) == 4 and rows[0]["reason"] is None
    else:
        assert rows[0]["reason"] and rows[0]["tgt_tags"] is None


def test_example_stage_on_bible_rows():
    from xner_ray.methods.projection.corpus import ParallelSpec, read_corpus
    from xner_ray.methods.projection.stages import EXAMPLE_COLUMNS, ExampleStage

    spec = ParallelSpec(lang="es", path=str(sample_path()),
                        links=str(sample_path("bible.links.jsonl")), limit=40)
    (table,) = list(read_corpus(spec, max_words=2048, rows_per_block=64, with_links=True))
    stage = ExampleStage(sources=["identical", "gold_links"], negative_ratio=0.25, max_per_pair=3)
    out = stage(table)
    assert out.schema == EXAMPLE_COLUMNS and out.num_rows > 40
    rows = out.to_pylist()
    assert {r["source"] for r in rows} <= {"identical", "gold_links"}
    neg = sum(r["negative"] for r in rows)
    assert neg == round((len(rows) - neg) / 3)
    assert stage(table).to_pylist() == rows  # same batch, same examples
    with pytest.raises(ValueError, match="needs similarity aligner settings"):
        ExampleStage(sources=["simalign"])


# -- the job config ------------------------------------------------------------------------------

def _job(**kw):
    from xner_ray.methods.projection.job import ProjectConfig

    base = dict(run_id="p", store="s", out="o", source_dev="d", teacher="t",
                corpora=[{"lang": "es", "path": "x"}], aligner="similarity")
    return ProjectConfig(**{**base, **kw})


def test_project_config_validation():
    assert _job().similarity_spec["layer"] == 8
    with pytest.raises(ValueError, match="aligner must be one of"):
        _job(aligner="giza")
    with pytest.raises(ValueError, match="needs `alignment_model`"):
        _job(aligner="model")
    with pytest.raises(ValueError, match="unknown similarity keys"):
        _job(similarity={"layers": 8})
    with pytest.raises(ValueError, match="set by the job"):
        _job(target={"freeze_layers": 3})
    with pytest.raises(ValueError, match="unknown projection keys"):
        _job(projection={"label_batch": 3})
    with pytest.raises(ValueError, match="gamma"):
        _job(gamma=-1)
    with pytest.raises(ValueError, match="unknown ExampleConfig keys"):
        _job(aligner="model", train_aligner={"examples": {"ratio": 0.3}})
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        _job(target={"epoch": 1})


def test_training_set_keeps_ok_rows_and_caps_entity_less(tmp_path):
    """The target model's training rows, as the read tasks see them (``local``: the same keys,
    counted and cut in this process instead of by Ray Data)."""
    import pyarrow.parquet as pq

    from xner_ray.methods.projection.job import plan_training_set, read_projected
    from xner_ray.store.schema import TABLES

    def row(pid, status, n_spans):
        spans = [{"start": 0, "end": 1, "type": "PER", "score": 1.0}] * n_spans
        tags = (["B-PER"] if n_spans else ["O"]) + ["O"] if status == "ok" else None
        return {"pair_id": pid, "src_tokens": ["a", "b"], "tgt_tokens": ["x", "y"],
                "src_entities": [], "tgt_spans": spans, "alignment_score": None,
                "status": status, "reason": None if status == "ok" else "why", "tgt_tags": tags,
                "ref": None, "aligner": "a"}

    rows = ([row(f"e{i}", "ok", 1) for i in range(3)] + [row(f"z{i}", "ok", 0) for i in range(5)]
            + [row("d1", "unmapped", 0), row("d2", "overlap", 1)])
    schema = TABLES["projections"].file_schema
    files = [str(tmp_path / "p1.parquet"), str(tmp_path / "p2.parquet")]  # split over 2 files
    pq.write_table(pa.Table.from_pylist(rows[::2], schema=schema), files[0])
    pq.write_table(pa.Table.from_pylist(rows[1::2], schema=schema), files[1])

    def read(plan):
        return [r for f in files for t in read_projected(f, max_empty_key=plan["max_empty_key"])
                for r in t.to_pylist()]

    plan = plan_training_set(files, 0.5, local=True)
    assert {k: plan[k] for k in ("with_entities", "empty", "empty_dropped")} == {
        "with_entities": 3, "empty": 3, "empty_dropped": 2}
    got = read(plan)
    assert len(got) == 6 and sum(r["tags"][0] == "B-PER" for r in got) == 3
    assert set(got[0]) == {"tokens", "tags"} and got[0]["tokens"] == ["x", "y"]
    assert read(plan) == got  # a deterministic pick
    everything = plan_training_set(files, None, local=True)
    assert everything["empty"] == 5 and len(read(everything)) == 8
    none = plan_training_set(files, 0.0, local=True)
    assert none["empty"] == 0 and len(read(none)) == 3
    pq.write_table(pa.Table.from_pylist(rows[-2:], schema=schema), tmp_path / "none.parquet")
    with pytest.raises(ValueError, match="no kept pair has a projected entity"):
        plan_training_set([str(tmp_path / "none.parquet")], None, local=True)
    with pytest.raises(ValueError, match="has no rows"):
        plan_training_set([], None, local=True)


# -- the projection plan, in process (the engine's in-process runner) --------------------------

def test_project_in_process_commits_rounds_with_counts_and_rejects(tiny_teacher_dir,
                                                                   tiny_model_dir, tmp_path):
    """``project`` on the engine's in-process runner: workers' files committed per language,
    counts and rejects from the records and footers, a rerun skips the committed rounds."""
    import pyarrow.parquet as pq

    from xner_ray.methods.projection.pipeline import ProjectionConfig, project
    from xner_ray.store import Store
    from xner_ray.store.schema import PROJECTION_STATUSES

    es = tmp_path / "a.en-es.tsv"
    es.write_text("John lives in Berlin\tJuan vive en Berlín\nHello\tHola\n"
                  "\tvacío\nGood night\tBuenas noches\n")  # line 3: empty source side
    de = tmp_path / "b.en-de.tsv"
    de.write_text("Hello world\tHallo Welt\n")
    store = Store(tmp_path / "store")
    cfg = ProjectionConfig(
        corpora=[{"lang": "es", "path": str(es), "fmt": "tsv"},
                 {"lang": "de", "path": str(de), "fmt": "tsv"}],
        teacher=str(tiny_teacher_dir), store=str(store.root), run_id="pl", block_rows=2,
        aligner={"kind": "similarity", "model": str(tiny_model_dir), "layer": 2}, local=True)
    counts = project(cfg, store)
    assert set(counts) == {"es", "de"}
    assert counts["es"]["pairs"] == 3 and counts["de"]["pairs"] == 1
    assert sum(counts["es"]["status"].values()) == 3
    assert set(counts["es"]["status"]) <= set(PROJECTION_STATUSES)
    assert counts["es"]["rejects"] == 1 and counts["de"]["rejects"] == 0
    m = store.manifest("pl", "es", 0)
    assert m["tables"]["projections"]["rows"] == 3 and m["tables"]["rejects"]["rows"] == 1
    assert sum(m["rejects_by_reason"].values()) == 1 == sum(m["meta"]["rejects_seen"].values())
    assert m["meta"]["counts"] == counts["es"] and m["meta"]["corpus"]["lang"] == "es"
    assert m["labels"] is None and m["meta"]["aligner"]["kind"] == "similarity"
    rows = pa.concat_tables([pq.read_table(store.path(f))
                             for f in m["tables"]["projections"]["files"]]).to_pylist()
    assert sorted(r["tgt_tokens"][0] for r in rows) == ["Buenas", "Hola", "Juan"]
    assert sum(len(r["src_entities"]) for r in rows) == counts["es"]["src_entities"]
    assert not store.manifest("pl", "de", 0)["rejects_by_reason"]
    again = project(cfg, store)  # complete rounds: skipped, their counts returned
    assert again == counts


# -- alignment example parts -------------------------------------------------------------------

def test_example_sink_parts_and_pair_level_split(tmp_path):
    from xner_ray.methods.projection.model import _dev_pair, read_example_part
    from xner_ray.methods.projection.pipeline import ExampleSink, example_parts
    from xner_ray.methods.projection.stages import EXAMPLE_COLUMNS

    rows = [{"pair_id": f"p{i % 20}", "lang": "es", "query": ["q"], "tokens": ["a", "b"],
             "tags": ["O", "B-ALN"], "source": "identical" if i % 3 else "gold_links",
             "kind": "name", "negative": i % 4 == 0} for i in range(60)]
    table = pa.Table.from_pylist(rows, schema=EXAMPLE_COLUMNS)
    sink = ExampleSink(str(tmp_path / "ex"))
    (rec,) = sink.write([table.slice(0, 30), table.slice(30)])
    assert rec["rows"] == 60 and sum(rec["counts"].values()) == 60
    assert rec["counts"]["negative:gold_links:name"] == sum(
        r["negative"] and r["source"] == "gold_links" for r in rows)
    assert sink.write([table.slice(0, 0)]) == []
    with pytest.raises(ValueError, match="no parts.json"):
        example_parts(tmp_path / "ex")
    fs, parts = example_parts([rec["path"]])
    dev = [r for p in parts for t in read_example_part(p, filesystem=fs, dev_share=0.3, dev=True)
           for r in t.to_pylist()]
    train = [r for p in parts for t in read_example_part(p, filesystem=fs, dev_share=0.3)
             for r in t.to_pylist()]
    assert len(dev) + len(train) == 60 and dev and train
    assert set(train[0]) == {"query", "tokens", "tags"}
    n_dev_pairs = sum(_dev_pair(f"p{i}", 0.3) for i in range(20))
    assert len(dev) == 3 * n_dev_pairs  # every example of a pair on one side
