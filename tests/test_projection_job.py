"""The projection job end to end on a real local Ray cluster (tiny models, 40 Bible verses):
alignment examples -> alignment model -> projection into the store -> target model; the
projections queried through the read-only SQL views; a rerun resumes without redoing work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from xner_ray.demo import sample_path

REPO = Path(__file__).resolve().parents[1]


def _project_main(argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location("project_job", REPO / "jobs" / "project.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from xner_ray.jobs import run_job

    return run_job("project", mod.ProjectConfig, mod.run_project, argv)


def make_gazetteer_teacher(model_dir: Path, out: Path, words: dict) -> Path:
    """A tiny "teacher" that tags exactly the words whose first sub-word is one of ``words``'
    first sub-words: attention and feed-forward outputs zeroed (each hidden state is then the
    normalised embedding of its own token), those tokens' embeddings made large, and one
    classifier row per word pointing at its hidden state. Deterministic, unlike a random head,
    so the job sees both entity-less verses and verses with entities."""
    import torch

    from tests.conftest import TAGS
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer

    tok = load_tokenizer(str(model_dir))
    torch.manual_seed(0)
    model = load_token_classifier(str(model_dir), TAGS).eval()
    base = model.base_model
    with torch.no_grad():
        for layer in base.encoder.layer:
            for lin in (layer.attention.output.dense, layer.output.dense):
                lin.weight.zero_()
                lin.bias.zero_()
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[TAGS.index("O")] = 1.0
        for word, tag in words.items():
            tid = tok.convert_tokens_to_ids(tok.tokenize(word)[0])
            base.embeddings.word_embeddings.weight[tid] = torch.randn(model.config.hidden_size) * 3
            enc = tok([word], is_split_into_words=True, return_tensors="pt")
            h = base(**enc).last_hidden_state[0, 1]
            model.classifier.weight[TAGS.index(tag)] = 2 * h / h.norm()
            model.classifier.bias[TAGS.index(tag)] = -h.norm().item()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def _lines(name: str, first: int, last: int) -> list[str]:
    return sample_path(name).read_text(encoding="utf-8").splitlines()[first:last]


def _write_config(tmp_path, name: str, cfg: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _base(tmp_path, teacher, model) -> dict:
    return {"store": str(tmp_path / "store"), "out": str(tmp_path / "out"),
            "source_dev": str(sample_path("en.dev.txt")), "teacher": str(teacher),
            "similarity": {"model": str(model), "layer": 2},
            "target": {"epochs": 1, "batch_size": 32, "dev_limit": 40},
            "projection": {"block_rows": 16}}


@pytest.fixture(scope="module")
def gazetteer_teacher(tiny_model_dir, tmp_path_factory) -> Path:
    return make_gazetteer_teacher(tiny_model_dir, tmp_path_factory.mktemp("gazetteer"),
                                  {"God": "B-PER", "Eden": "B-LOC"})


@pytest.mark.slow
def test_project_job_model_aligner_two_languages_and_resume(ray_cluster, gazetteer_teacher,
                                                            tiny_model_dir, tmp_path, capsys):
    """The paper's path: examples -> alignment model (trained) -> projection of two corpora
    (Moses with gold links, and TSV) in one pipeline -> store; SQL; a rerun redoes nothing.
    The tiny aligner is untrained in all but name, so statuses vary: the checks are on what
    every row must satisfy."""
    from xner_ray.sqlshell import connect, run_sql
    from xner_ray.store import Store
    from xner_ray.store.schema import PROJECTION_STATUSES

    tsv = tmp_path / "more.en-es.tsv"
    tsv.write_text("".join(f"{a}\t{b}\n" for a, b in zip(_lines("bible.en-es.en", 40, 60),
                                                         _lines("bible.en-es.es", 40, 60))))
    cfg = {**_base(tmp_path, gazetteer_teacher, tiny_model_dir), "run_id": "pj",
           "corpora": [{"lang": "es", "path": str(sample_path()), "limit": 40,
                        "links": str(sample_path("bible.links.jsonl")),
                        "dev": str(sample_path("de.dev.txt"))},  # any CoNLL file: report only
                       {"lang": "es-tsv", "path": str(tsv), "fmt": "tsv"}],
           "aligner": "model", "train_target": False,
           "train_aligner": {"model": str(tiny_model_dir), "epochs": 1, "batch_size": 32,
                             "lr": 1e-3, "examples": {"max_per_pair": 3}}}
    config = _write_config(tmp_path, "model", cfg)
    assert _project_main(["--config", config]) == 0
    store = Store(tmp_path / "store")
    assert store.complete_rounds("pj", "es") == [0] == store.complete_rounds("pj", "es-tsv")
    assert store.get_run("pj")["status"] == "succeeded"

    con = connect(tmp_path / "store")
    rows = con.execute("SELECT lang, status, reason, tgt_tags, tgt_tokens, tgt_spans, "
                       "src_entities, aligner, ref FROM projections").fetchall()
    assert sum(r[0] == "es" for r in rows) == 40 and sum(r[0] == "es-tsv" for r in rows) == 20
    n_empty = 0
    for lang, status, reason, tags, tokens, spans, src, aligner, ref in rows:
        assert status in PROJECTION_STATUSES and aligner.startswith("align_model.v1(")
        assert (ref or "").startswith("Genesis ") == (lang == "es")
        n_empty += not src and lang == "es"
        if not src:  # nothing to project: kept, all O
            assert status == "ok" and set(tags) == {"O"} and not spans
        if status == "ok":
            assert reason is None and len(tags) == len(tokens)
            assert sum(t.startswith("B-") for t in tags) == len(spans)
        else:
            assert reason and tags is None
    assert n_empty == 7  # the gazetteer teacher finds God or Eden in 33 of the first 40 verses
    names = con.execute("SELECT DISTINCT src_tokens[e.start + 1] FROM "
                        "(SELECT src_tokens, unnest(src_entities) AS e FROM projections)").fetchall()
    assert sorted(n for (n,) in names) == ["Eden", "God"]
    status = run_sql(con, "projection_status").to_dicts()
    assert {r["lang"]: 0 for r in status} == {"es": 0, "es-tsv": 0}
    assert sum(r["pairs"] for r in status) == 60
    assert sum(r["src_entities"] for r in status) == con.execute(
        "SELECT sum(len(src_entities)) FROM projections").fetchone()[0]

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    info = results["aligner"]
    assert info["kind"] == "model" and 0.0 <= info["dev_span_f1"] <= 1.0
    counts = info["example_counts"]
    assert counts["examples"] == sum(v for k, v in counts.items() if ":" in k)
    assert any(k.startswith("negative:") for k in counts)
    assert any(k.startswith("positive:gold_links") for k in counts)
    es = results["languages"]["es"]
    assert es["projection"]["pairs"] == 40 and es["direct_transfer"]["n_sentences"] == 300
    assert "target_dev" not in es and not (tmp_path / "out" / "es" / "model.safetensors").exists()
    examples = tmp_path / "out" / "aligner" / "examples"  # parts written by the write tasks
    parts = json.loads((examples / "parts.json").read_text())["parts"]
    assert parts and all((examples / p).exists() for p in parts)
    assert sorted(p.name for p in examples.glob("part-*.parquet")) == sorted(parts)
    assert info["examples"] == str(examples)

    capsys.readouterr()
    assert _project_main(["--config", config]) == 0  # rerun: everything reused
    out = capsys.readouterr().out
    assert "trained already, reused" in out and "complete already, skipped" in out
    assert "target model complete, reused" in out
    assert store.complete_rounds("pj", "es") == [0]


@pytest.mark.slow
def test_project_job_trains_target_on_projections(ray_cluster, gazetteer_teacher, tiny_model_dir,
                                                  tmp_path):
    """Deterministic projections (the similarity aligner on a pair whose two sides are the same
    English verse maps every word onto itself), then the target model with the re-weighted
    loss from the teacher, lower layers frozen."""
    from xner_ray.sqlshell import connect

    tsv = tmp_path / "same.tsv"
    tsv.write_text("".join(f"{a}\t{a}\n" for a in _lines("bible.en-es.en", 0, 40)))
    cfg = {**_base(tmp_path, gazetteer_teacher, tiny_model_dir), "run_id": "same",
           "corpora": [{"lang": "xx", "path": str(tsv), "fmt": "tsv",
                        "dev": str(sample_path("en.dev.txt"))}],
           "aligner": "similarity", "gamma": 4.0, "freeze_layers": 1, "max_empty_share": 0.1}
    assert _project_main(["--config", _write_config(tmp_path, "same", cfg)]) == 0
    con = connect(tmp_path / "store")
    rows = con.execute("SELECT status, src_entities, tgt_spans, tgt_tags FROM projections").fetchall()
    assert len(rows) == 40 and {r[0] for r in rows} == {"ok"}
    for _, src, spans, tags in rows:  # every entity found exactly where it is
        assert [(e["start"], e["end"], e["type"]) for e in src] == [
            (s["start"], s["end"], s["type"]) for s in spans]
        assert tags.count("B-PER") + tags.count("B-LOC") == len(src)
    xx = json.loads((tmp_path / "out" / "results.json").read_text())["languages"]["xx"]
    assert xx["train_pairs"] == {"with_entities": 33, "empty": 3, "empty_dropped": 4}
    assert (xx["gamma"], xx["freeze_layers"]) == (4.0, 1)
    assert xx["target_dev"]["n_sentences"] > 0 and 0.0 <= xx["source_dev_f1"] <= 1.0
    summary = json.loads((tmp_path / "out" / "xx" / "train_summary.json").read_text())
    assert summary["n_train"] == 36 and summary["gamma"] == 4.0
    assert summary["config"]["freeze_layers"] == 1
    assert summary["config"]["model"] == str(gazetteer_teacher)  # starts from the teacher


def test_bad_project_config_fails_before_any_work(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("run_id: x\nstore: s\nout: o\nsource_dev: d\nteacher: t\n"
                      "corpora: [{lang: es, path: p, link: typo}]\n")
    assert _project_main(["--config", str(config)]) == 2
    assert "unknown corpus keys ['link']" in capsys.readouterr().err


def test_demo_config_resolves(capsys):
    assert _project_main(["--config", str(REPO / "configs" / "project_demo.yaml"),
                          "--dry-run"]) == 0
    out = capsys.readouterr().out
    resolved, end = json.JSONDecoder().raw_decode(out)  # the resolved config, then the path check
    assert "path check: ok" in out[end:]
    assert resolved["aligner"] == "model" and resolved["gamma"] == 4.0
    assert resolved["corpora"][0]["lang"] == "es"
