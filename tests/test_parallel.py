"""Parallel readers: Moses pairs (lengths, rejects, ids), locating OPUS files, TSV pairs, and
the real Bible corpus."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from xner_ray.io import (
    MosesFiles, ParallelLengthError, ReadStats, SentencePair, find_moses, read_moses,
    read_tsv_pairs,
)
from xner_ray.io.parallel import pair_id
from xner_ray.records import (
    EMPTY_SENTENCE, INVALID_UTF8, MALFORMED_LINE, TOO_LONG, RejectSink,
)


def write(path: Path, data: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return str(path)


def test_read_moses_pairs_offsets_and_ids(tmp_path):
    src = write(tmp_path / "c.en-es.en", "In the beginning God created.\nAnd God said, Let.\n")
    tgt = write(tmp_path / "c.en-es.es", "EN el principio crió Dios.\r\nY dijo Dios: Sea.\n")
    ids = write(tmp_path / "c.en-es.ids", "Genesis 1:1\nGenesis 1:3\n")
    stats = ReadStats()
    pairs = list(read_moses(src, tgt, src_lang="en", tgt_lang="es", ids_path=ids, stats=stats))
    assert [p.line for p in pairs] == [1, 2] and [p.ref for p in pairs] == [
        "Genesis 1:1", "Genesis 1:3"]
    first = pairs[0]
    assert isinstance(first, SentencePair)
    assert first.src.tokens == ["In", "the", "beginning", "God", "created", "."]
    assert first.tgt.tokens == ["EN", "el", "principio", "crió", "Dios", "."]
    assert (first.src.lang, first.tgt.lang, first.src.source, first.tgt.source) == (
        "en", "es", src, tgt)
    assert first.tgt.text == "EN el principio crió Dios."
    assert first.src.offsets[2] == (7, 16) and first.src.ref == "Genesis 1:1"
    assert first.pair_id == pair_id("en", "es", first.src.text, first.tgt.text, "Genesis 1:1")
    assert pairs[1].tgt.tokens == ["Y", "dijo", "Dios", ":", "Sea", "."]
    assert (stats.sentences, stats.lines, stats.files) == (2, 2, 3)


def test_pair_id_is_stable_and_distinguishes():
    a = pair_id("en", "es", "God", "Dios", "Gen 1:1")
    assert a == pair_id("en", "es", "God", "Dios", "Gen 1:1")
    assert len({a, pair_id("en", "es", "God", "Dios", "Gen 1:2"),
                pair_id("es", "en", "God", "Dios", "Gen 1:1"),
                pair_id("en", "es", "Go", "dDios", "Gen 1:1")}) == 4


def test_read_moses_length_mismatch_raises_at_call(tmp_path):
    src = write(tmp_path / "a.en", "one\ntwo\nthree\n")
    tgt = write(tmp_path / "a.es", "uno\ndos")
    with pytest.raises(ParallelLengthError) as err:
        read_moses(src, tgt, src_lang="en", tgt_lang="es")  # no iteration needed
    msg = str(err.value)
    assert src in msg and tgt in msg and "3 lines" in msg and "2 lines" in msg
    assert isinstance(err.value, ValueError)
    ids = write(tmp_path / "a.ids", "1\n2\n")
    tgt3 = write(tmp_path / "b.es", "uno\ndos\ntres\n")
    with pytest.raises(ParallelLengthError, match="ids .*2 lines"):
        read_moses(src, tgt3, src_lang="en", tgt_lang="es", ids_path=ids)


def test_read_moses_rejects(tmp_path):
    src = write(tmp_path / "a.en", b"good one\n\nfine\n\xff bad\na b c d\nok\n   \n")
    tgt = write(tmp_path / "a.es", b"bueno\nvac\xc3\xado\n\n\nuno\nbien\n\x01\n")
    sink = RejectSink()
    pairs = list(read_moses(src, tgt, src_lang="en", tgt_lang="es", rejects=sink, max_words=3))
    assert [(p.line, p.src.tokens, p.tgt.tokens) for p in pairs] == [
        (1, ["good", "one"], ["bueno"]), (6, ["ok"], ["bien"])]
    assert [(r.path, r.line, r.reason, r.raw, r.detail) for r in sink] == [
        (src, 2, EMPTY_SENTENCE, "\tvacío",
         "source side: no tokens (only spaces or invisible characters)"),
        (src, 3, EMPTY_SENTENCE, "fine\t",
         "target side: no tokens (only spaces or invisible characters)"),
        (src, 4, INVALID_UTF8, "\ufffd bad\t", "source side is not valid UTF-8"),
        (src, 5, TOO_LONG, "a b c d\tuno", "source side: 4 words > max_words=3"),
        (src, 7, EMPTY_SENTENCE, "\t\x01",
         "source side: no tokens (only spaces or invisible characters)"),
    ]


def test_read_moses_compressed(tmp_path):
    src = write(tmp_path / "a.en.gz", gzip.compress(b"Hello .\n"))
    tgt = write(tmp_path / "a.es", "Hola .\n")
    [pair] = read_moses(src, tgt, src_lang="en", tgt_lang="es")
    assert (pair.src.tokens, pair.tgt.tokens, pair.ref) == (["Hello", "."], ["Hola", "."], None)


def test_find_moses(tmp_path):
    d = tmp_path / "opus"
    files = [write(d / f"bible.en-es.{ext}", "x\n") for ext in ("en", "es", "ids")]
    assert find_moses(str(d), "en", "es") == MosesFiles(*files)
    assert find_moses(str(d), "es", "en") == MosesFiles(files[1], files[0], files[2])
    assert find_moses(str(d / "bible"), "en", "es") == MosesFiles(*files)
    assert find_moses(str(d / "bible.en-es"), "en", "es") == MosesFiles(*files)
    gz = tmp_path / "gz"
    zipped = [write(gz / f"t.de-en.{ext}.gz", gzip.compress(b"x\n")) for ext in ("de", "en")]
    assert find_moses(str(gz), "en", "de") == MosesFiles(zipped[1], zipped[0], None)
    with pytest.raises(FileNotFoundError, match="en-fr"):
        find_moses(str(d), "en", "fr")
    write(d / "news.en-es.en", "x\n")
    write(d / "news.en-es.es", "x\n")
    with pytest.raises(ValueError, match="several Moses corpora"):
        find_moses(str(d), "en", "es")


def test_read_tsv_pairs(tmp_path):
    path = write(tmp_path / "p.tsv", b"Hello .\tHola .\nno tab here\na\tb\tc\n\n"
                 + b"x\t\n\xff\ty\nGood\tBien\n")
    sink = RejectSink()
    pairs = list(read_tsv_pairs(path, src_lang="en", tgt_lang="es", rejects=sink))
    assert [(p.line, p.src.tokens, p.tgt.tokens, p.ref) for p in pairs] == [
        (1, ["Hello", "."], ["Hola", "."], None), (7, ["Good"], ["Bien"], None)]
    assert [(r.line, r.reason, r.raw, r.detail) for r in sink] == [
        (2, MALFORMED_LINE, "no tab here", "expected 2 tab-separated columns, got 1"),
        (3, MALFORMED_LINE, "a\tb\tc", "expected 2 tab-separated columns, got 3"),
        (5, EMPTY_SENTENCE, "x\t", "target side: no tokens (only spaces or invisible "
                                   "characters)"),
        (6, INVALID_UTF8, "\ufffd\ty", "line is not valid UTF-8"),
    ]


def test_read_tsv_pairs_with_id_column(tmp_path):
    path = write(tmp_path / "p.tsv", "Hello\tHola\tid-1\nBye\tAdiós\n")
    sink = RejectSink()
    pairs = list(read_tsv_pairs(path, src_lang="en", tgt_lang="es", id_column=True,
                                rejects=sink))
    assert [(p.ref, p.src.ref, p.tgt.tokens) for p in pairs] == [("id-1", "id-1", ["Hola"])]
    assert [(r.line, r.reason) for r in sink] == [(2, MALFORMED_LINE)]


def test_real_bible(shared_data):
    files = find_moses(str(shared_data / "opus-bible-en-es"), "en", "es")
    assert files.ids is not None
    sink, stats = RejectSink(), ReadStats()
    pairs = list(read_moses(files.src, files.tgt, src_lang="en", tgt_lang="es",
                            ids_path=files.ids, rejects=sink, stats=stats))
    assert len(pairs) == 31_084 and sink.total == 0
    assert pairs[0].ref == "Genesis 1:1" and pairs[-1].line == 31_084
    assert len({p.pair_id for p in pairs}) == 31_084  # 164 repeated verse pairs differ by ref
    # The gold word links are character spans; nearly all fall on token boundaries (the rest
    # are glued words in the Spanish text, e.g. "tambiénbdelio").
    on_boundary = total = 0
    with open(shared_data / "opus-bible-en-es" / "links.jsonl", encoding="utf-8") as fh:
        for pair, line in zip(pairs, fh):
            record = json.loads(line)
            assert record["id"] == pair.ref
            for side, sent in (("src", pair.src), ("tgt", pair.tgt)):
                starts, ends = {s for s, _ in sent.offsets}, {e for _, e in sent.offsets}
                for link in record["links"]:
                    start, end = link[side]
                    total += 1
                    on_boundary += start in starts and end in ends
    assert on_boundary / total > 0.999
