"""Readers: every CoNLL layout, every reject reason (exact reason, line, raw), text/JSONL input,
file expansion and compression, and the exact counts on the real corpora."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import pytest

from xner_ray.io import (
    ReadStats, count_lines, detect_format, expand_paths, iter_lines, read_conll, read_jsonl,
    read_text, read_unlabeled, word_tokenize,
)
from xner_ray.records import (
    BAD_JSON, EMPTY_SENTENCE, INVALID_BIO, INVALID_UTF8, MALFORMED_LINE, TOO_LONG,
    UNKNOWN_LABEL, RejectSink,
)


def write(path: Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def read(path, **kw):
    sink, stats = RejectSink(), ReadStats()
    sents = list(read_conll(path, rejects=sink, stats=stats, **kw))
    return sents, sink, stats


# ---------------------------------------------------------------- files


def test_expand_paths_file_dir_glob_list(tmp_path):
    a = write(tmp_path / "d" / "b.txt", "x")
    b = write(tmp_path / "d" / "a.txt", "x")
    c = write(tmp_path / "d" / "sub" / "c.conll", "x")
    write(tmp_path / "d" / ".hidden", "x")
    write(tmp_path / "d" / ".git" / "config", "x")
    assert expand_paths(a) == [a]
    assert expand_paths(tmp_path / "d") == [b, a, c]
    assert expand_paths(str(tmp_path / "d" / "*.txt")) == [b, a]
    assert expand_paths(str(tmp_path / "d" / "**" / "*.conll")) == [c]
    assert expand_paths([a, str(tmp_path / "d" / "sub")]) == [a, c]


def test_expand_paths_nothing_matches(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        expand_paths(str(tmp_path / "nope*.txt"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        expand_paths(str(tmp_path / "missing.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        expand_paths(tmp_path / "empty")


def test_readers_raise_at_call_when_nothing_matches(tmp_path):
    missing = str(tmp_path / "none*.txt")
    for reader, kw in ((read_conll, {}), (read_text, {"lang": "en"}), (read_jsonl, {}),
                       (read_unlabeled, {"lang": "en"})):
        with pytest.raises(FileNotFoundError, match="none"):
            reader(missing, **kw)


def test_expand_paths_file_uri(tmp_path):
    write(tmp_path / "b.txt", "x")
    write(tmp_path / "a.txt.gz", gzip.compress(b"l1\nl2\n"))
    write(tmp_path / ".hidden", "x")
    uri = f"file://{tmp_path}"
    assert expand_paths(uri) == [f"{uri}/a.txt.gz", f"{uri}/b.txt"]
    assert expand_paths(f"{uri}/*.gz") == [f"{uri}/a.txt.gz"]
    assert expand_paths(f"{uri}/b.txt") == [f"{uri}/b.txt"]
    assert [t for _, t, _ in iter_lines(f"{uri}/a.txt.gz")] == ["l1", "l2"]
    with pytest.raises(FileNotFoundError, match="zzz"):
        expand_paths(f"{uri}/zzz*")


def test_iter_lines_endings_whitespace_utf8_bom(tmp_path):
    path = write(tmp_path / "f.txt", b"\xef\xbb\xbfa b  \r\nc\t\r\n\r\n\xff\xfe x\nlast")
    got = list(iter_lines(path))
    assert got == [(1, "a b", b"a b  "), (2, "c", b"c\t"), (3, "", b""),
                   (4, None, b"\xff\xfe x"), (5, "last", b"last")]
    assert [t for _, t, _ in iter_lines(path, rstrip=False)][:2] == ["a b  ", "c\t"]
    assert count_lines(path) == 5
    assert count_lines(write(tmp_path / "g.txt", "a\nb\n")) == 2
    assert count_lines(write(tmp_path / "h.txt", "")) == 0


@pytest.mark.parametrize("ext", [".gz", ".bz2", ".xz", ".zst"])
def test_iter_lines_compressed(tmp_path, ext):
    data = "".join(f"line {i}\n" for i in range(5000)).encode()
    if ext == ".zst":
        import pyarrow as pa

        with pa.CompressedOutputStream(str(tmp_path / f"f{ext}"), "zstd") as out:
            out.write(data)
        path = str(tmp_path / f"f{ext}")
    else:
        compress = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}[ext]
        path = write(tmp_path / f"f{ext}", compress(data))
    lines = list(iter_lines(path))
    assert len(lines) == 5000 and lines[-1] == (5000, "line 4999", b"line 4999")
    assert count_lines(path) == 5000


# ---------------------------------------------------------------- CoNLL layouts


def _pairs(sents):
    return [list(zip(s.tokens, s.tags)) for s in sents]


EXPECTED = [[("EU", "B-ORG"), ("rejects", "O")], [("Peter", "B-PER"), ("Blackburn", "I-PER")]]


@pytest.mark.parametrize("content", [
    "EU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn I-PER\n",  # token tag
    "EU NNP B-ORG\nrejects VBZ O\n\nPeter NNP B-PER\nBlackburn NNP I-PER\n",  # token POS tag
    "EU\tB-ORG\nrejects\tO\n\nPeter\tB-PER\nBlackburn\tI-PER\n",  # tab-separated
    "EU B-ORG  \nrejects O \n \nPeter B-PER\t\nBlackburn I-PER  \n",  # trailing spaces
    "EU B-ORG\r\nrejects O\r\n\r\nPeter B-PER\r\nBlackburn I-PER\r\n",  # CRLF
    "EU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn I-PER",  # no final newline
    "\n\nEU B-ORG\nrejects O\n\n\n\nPeter B-PER\nBlackburn I-PER\n\n\n",  # extra blank lines
    "-DOCSTART- -X- O\n\nEU B-ORG\nrejects O\n-DOCSTART- -X- O\nPeter B-PER\nBlackburn I-PER\n",
    "EU  NNP   B-ORG\nrejects VBZ O\n\nPeter NNP B-PER\nBlackburn NNP I-PER\n",  # space runs
])
def test_conll_layouts(tmp_path, content):
    path = write(tmp_path / "f.txt", content)
    sents, sink, _ = read(path)
    assert _pairs(sents) == EXPECTED
    assert sink.total == 0
    assert all(s.source == path and s.lang == "" for s in sents)


def test_conll_line_numbers_and_docstart(tmp_path):
    path = write(tmp_path / "f.txt", "-DOCSTART- -DOCSTART- O\nDe O\nman O\n\n"
                                     "-DOCSTART- -DOCSTART- O\n\nJan B-PER\n")
    sents, _, stats = read(path, lang="nl")
    assert [(s.tokens, s.line, s.lang) for s in sents] == [
        (["De", "man"], 2, "nl"), (["Jan"], 7, "nl")]
    assert stats.docstarts == 2 and stats.sentences == 2 and stats.entities == 1
    assert stats.lines == 7 and stats.tokens == 3


def test_conll_wikiann_prefix(tmp_path):
    path = write(tmp_path / "wiki.txt", "de:als\tO\nde:Savoyer\tB-LOC\nde:3:57\tO\n\n"
                                        "de::\tO\nde:Antonina\tB-PER\n")
    sents, sink, stats = read(path)
    assert [s.tokens for s in sents] == [["als", "Savoyer", "3:57"], [":", "Antonina"]]
    assert {s.lang for s in sents} == {"de"} and stats.langs == {"de": 2}
    sents, _, _ = read(path, lang="xx")  # an explicit lang wins; the prefix is still stripped
    assert sents[0].lang == "xx" and sents[0].tokens[0] == "als"


def test_conll_colon_tokens_in_unprefixed_file_are_kept(tmp_path):
    path = write(tmp_path / "f.txt", "en:route O\nat O\n12:30 O\nhttp://x.org O\n")
    sents, _, _ = read(path)
    assert sents[0].tokens == ["en:route", "at", "12:30", "http://x.org"]
    assert sents[0].lang == ""


def test_conll_prefix_missing_later_is_malformed(tmp_path):
    head = "".join(f"nl:w{i}\tO\n" for i in range(20))  # the sniffed lines are all prefixed
    path = write(tmp_path / "f.txt", head + "\nnl:b\tO\nc\tO\n")
    sents, sink, _ = read(path)
    assert [s.tokens for s in sents] == [[f"w{i}" for i in range(20)]]
    [rej] = sink.rejects
    assert (rej.reason, rej.line, rej.raw) == (MALFORMED_LINE, 22, "nl:b\tO\nc\tO")
    assert rej.detail == "line 23: token lacks the file's prefix 'nl:'"
    # Within the sniffed lines, one unprefixed token means the file is not prefixed at all.
    mixed = write(tmp_path / "g.txt", "nl:a\tO\n\nc\tO\n")
    assert [s.tokens for s in read(mixed)[0]] == [["nl:a"], ["c"]]


def test_conll_gzip_and_directory(tmp_path):
    write(tmp_path / "d" / "a.txt.gz", gzip.compress(b"EU B-ORG\nrejects O\n"))
    write(tmp_path / "d" / "b.txt", "Peter B-PER\nBlackburn I-PER\n")
    sents, _, stats = read(tmp_path / "d")
    assert _pairs(sents) == EXPECTED
    assert stats.files == 2


def test_conll_tab_tokens_may_contain_spaces(tmp_path):
    path = write(tmp_path / "f.txt", "New York\tB-LOC\nis\tO\n")
    assert read(path)[0][0].tokens == ["New York", "is"]


# ---------------------------------------------------------------- CoNLL rejects


def test_reject_malformed_column_count(tmp_path):
    path = write(tmp_path / "f.txt", "a O\nb O\n\nc O\nd X O\ne O\n\nf O\n")
    sents, sink, stats = read(path)
    assert [s.tokens for s in sents] == [["a", "b"], ["f"]]
    [rej] = sink.rejects
    assert (rej.path, rej.line, rej.reason) == (path, 4, MALFORMED_LINE)
    assert rej.raw == "c O\nd X O\ne O"
    assert rej.detail == "line 5: expected 2 columns like the start of the file, got 3"
    assert stats.rejected == 1 and stats.sentences == 2


def test_reject_missing_tag(tmp_path):
    path = write(tmp_path / "f.txt", "a O\nb\n")
    _, sink, _ = read(path)
    [rej] = sink.rejects
    assert (rej.reason, rej.line, rej.raw) == (MALFORMED_LINE, 1, "a O\nb")
    assert rej.detail == "line 2: expected a token and a tag, got 1 column"


def test_empty_token_dropped_when_o_rejected_when_entity(tmp_path):
    path = write(tmp_path / "f.txt", "a O\n O\nb O\n\nc O\n B-PER\n")
    sents, sink, stats = read(path)
    assert [(s.tokens, s.tags) for s in sents] == [(["a", "b"], ["O", "O"])]
    assert stats.empty_tokens_dropped == 1
    [rej] = sink.rejects
    assert (rej.reason, rej.line, rej.raw, rej.detail) == (
        MALFORMED_LINE, 5, "c O\n B-PER", "line 6: empty token")
    _, sink, _ = read(path, drop_empty_tokens=False)
    assert [(r.reason, r.line) for r in sink] == [(MALFORMED_LINE, 1), (MALFORMED_LINE, 5)]


def test_reject_invalid_utf8(tmp_path):
    path = write(tmp_path / "f.txt", b"a O\n\xff\xfeb O\n\nc O\n")
    sents, sink, _ = read(path)
    assert [s.tokens for s in sents] == [["c"]]
    [rej] = sink.rejects
    assert (rej.reason, rej.line, rej.raw) == (INVALID_UTF8, 1, "a O\n\ufffd\ufffdb O")
    assert rej.detail == "line 2: line is not valid UTF-8"


@pytest.mark.parametrize("tag", ["E-PER", "B-", "PER", "b-PER", "S-LOC"])
def test_reject_invalid_tag(tmp_path, tag):
    path = write(tmp_path / "f.txt", f"x O\n\na O\nb {tag}\n")
    sents, sink, _ = read(path)
    assert [s.tokens for s in sents] == [["x"]]
    [rej] = sink.rejects
    assert (rej.reason, rej.line, rej.raw) == (INVALID_BIO, 3, f"a O\nb {tag}")
    assert rej.detail == f"line 4: tag {tag!r} is not O, B-TYPE or I-TYPE"


def test_iob_repair_auto_iob1_and_strict_iob2(tmp_path):
    path = write(tmp_path / "f.txt", "a I-PER\nb I-PER\nc O\nd I-LOC\n\ne B-PER\nf I-PER\n")
    for scheme in ("auto", "iob1"):
        sents, sink, stats = read(path, scheme=scheme)
        assert sents[0].tags == ["B-PER", "I-PER", "O", "B-LOC"]
        assert sents[1].tags == ["B-PER", "I-PER"]
        assert (stats.bio_repairs, stats.entities, sink.total) == (2, 3, 0)
    sents, sink, stats = read(path, scheme="iob2")
    assert len(sents) == 1 and stats.bio_repairs == 0
    [rej] = sink.rejects
    assert (rej.reason, rej.line) == (INVALID_BIO, 1)
    assert rej.detail.startswith("line 1: 'I-PER' starts an entity")
    with pytest.raises(ValueError, match=r"valid: \('auto', 'iob2', 'iob1'\)"):
        read_conll(path, scheme="bioes")  # raised at the call, before any iteration


def test_reject_unknown_label(tmp_path):
    path = write(tmp_path / "f.txt", "a B-PER\n\nb B-DATE\nc I-DATE\n\nd B-LOC\n")
    sents, sink, _ = read(path, labels={"PER", "B-LOC", "I-LOC", "O"})
    assert [s.tokens for s in sents] == [["a"], ["d"]]
    [rej] = sink.rejects
    assert (rej.reason, rej.line, rej.raw) == (UNKNOWN_LABEL, 3, "b B-DATE\nc I-DATE")
    assert rej.detail == "line 3: entity type 'DATE' of tag 'B-DATE' not in ['LOC', 'PER']"


def test_reject_too_long(tmp_path):
    path = write(tmp_path / "f.txt", "a O\nb O\nc O\n\nd O\n")
    sents, sink, _ = read(path, max_words=2)
    assert [s.tokens for s in sents] == [["d"]]
    [rej] = sink.rejects
    assert (rej.reason, rej.line, rej.raw, rej.detail) == (
        TOO_LONG, 1, "a O\nb O\nc O", "3 words > max_words=2")
    assert len(read(path, max_words=None)[0]) == 2


def test_require_tags_false(tmp_path):
    one = write(tmp_path / "one.txt", "Hallo\nwereld\n\nJan\n")
    sents, sink, _ = read(one, require_tags=False)
    assert [(s.tokens, s.tags) for s in sents] == [(["Hallo", "wereld"], None), (["Jan"], None)]
    _, sink, _ = read(one)  # tags required: every one-column line is malformed
    assert [(r.reason, r.line) for r in sink] == [(MALFORMED_LINE, 1), (MALFORMED_LINE, 4)]
    two = write(tmp_path / "two.txt", "Jan B-PER\n")
    assert read(two, require_tags=False)[0][0].tags == ["B-PER"]


def test_rejects_without_sink_still_counted(tmp_path, caplog):
    path = write(tmp_path / "f.txt", "a O\nb O\n\nc X O\n")
    stats = ReadStats()
    assert [s.tokens for s in read_conll(path, stats=stats)] == [["a", "b"]]
    assert stats.rejected == 1
    assert "malformed_line" in caplog.text  # the fresh sink still warns once per reason


# ---------------------------------------------------------------- text, JSONL, dispatch


@pytest.mark.parametrize("text,tokens", [
    ("Hello, world!", ["Hello", ",", "world", "!"]),
    ("It's a well-known fact.", ["It's", "a", "well-known", "fact", "."]),
    ("1,000.50 € and 3.5km", ["1,000.50", "€", "and", "3.5km"]),
    ("U.S.A. (1996-08-22)", ["U", ".", "S", ".", "A", ".", "(", "1996-08-22", ")"]),
    ("Ọ̀gbẹ́ni Adé lọ sí Èkó", ["Ọ̀gbẹ́ni", "Adé", "lọ", "sí", "Èkó"]),  # combining marks
    ("नमस्ते दुनिया", ["नमस्ते", "दुनिया"]),
    ("می\u200cخواهم", ["می\u200cخواهم"]),  # ZWNJ inside a Persian word
    ("a\u200bb \ufeff\x00 c--d", ["a", "b", "c", "-", "-", "d"]),
    ("😀👍 #tag @x", ["😀", "👍", "#", "tag", "@", "x"]),
    ("   ", []),
])
def test_word_tokenize(text, tokens):
    got = word_tokenize(text)
    assert [t for t, _, _ in got] == tokens
    assert all(text[s:e] == t for t, s, e in got)


def test_word_tokenize_never_loses_visible_chars():
    import random

    rng = random.Random(0)
    alphabet = "aZé\u0301ß9٣.,'-’ _!?\t\n\u3000€😀\u0915\u093f:/\"()"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        got = word_tokenize(text)
        assert all(text[s:e] == t for t, s, e in got)
        assert all(a[2] <= b[1] for a, b in zip(got, got[1:]))
        covered = {i for _, s, e in got for i in range(s, e)}
        assert all(ch.isspace() for i, ch in enumerate(text) if i not in covered)


def test_read_text(tmp_path):
    path = write(tmp_path / "t.txt", b"Hola mundo .\n\n   \n\xc3\x28 bad\n"
                 + "\u3000\x01\n  Adiós, amigo\n".encode() + b"a b c d\n")
    sink, stats = RejectSink(), ReadStats()
    sents = list(read_text(path, lang="es", rejects=sink, stats=stats, max_words=3))
    assert [(s.tokens, s.line, s.lang) for s in sents] == [
        (["Hola", "mundo", "."], 1, "es"), (["Adiós", ",", "amigo"], 6, "es")]
    assert sents[1].text == "  Adiós, amigo" and sents[1].offsets == [(2, 7), (7, 8), (9, 14)]
    assert [(r.reason, r.line, r.raw) for r in sink] == [
        (INVALID_UTF8, 4, "\ufffd( bad"), (EMPTY_SENTENCE, 5, "\u3000\x01"),
        (TOO_LONG, 7, "a b c d")]
    assert stats.sentences == 2 and stats.rejected == 3 and stats.lines == 7


def test_read_jsonl(tmp_path):
    lines = [
        '{"text": "Jan woont in Gent .", "lang": "nl", "id": 7}',
        '{"text": "no id"}',
        "{bad json",
        "[1, 2]",
        '{"txt": "x"}',
        '{"text": 3, "id": 1}',
        '{"text": "  ", "id": 2}',
        "",
        '{"text": "Hello", "lang": null, "id": "e1"}',
        '{"text": "Hi", "lang": 5, "id": "e2"}',
    ]
    path = write(tmp_path / "t.jsonl", "\n".join(lines) + "\n")
    sink = RejectSink()
    sents = list(read_jsonl(path, lang="en", id_field="id", rejects=sink))
    assert [(s.tokens, s.lang, s.ref, s.line) for s in sents] == [
        (["Jan", "woont", "in", "Gent", "."], "nl", "7", 1), (["Hello"], "en", "e1", 9)]
    assert sents[0].text == "Jan woont in Gent ." and sents[0].offsets[3] == (13, 17)
    assert [(r.reason, r.line, r.raw) for r in sink] == [
        (MALFORMED_LINE, 2, lines[1]), (BAD_JSON, 3, lines[2]), (MALFORMED_LINE, 4, lines[3]),
        (MALFORMED_LINE, 5, lines[4]), (MALFORMED_LINE, 6, lines[5]),
        (EMPTY_SENTENCE, 7, lines[6]), (MALFORMED_LINE, 10, lines[9])]
    assert sink.rejects[0].detail == "field 'id' missing or not a string/int"
    assert sink.rejects[4].detail == "field 'text' missing or not a string"
    assert sink.rejects[2].detail == "expected a JSON object, got list"
    plain = list(read_jsonl(path, rejects=RejectSink()))
    assert [s.lang for s in plain] == ["nl", "", ""]


def test_detect_format_and_read_unlabeled(tmp_path):
    conll = write(tmp_path / "target.txt", "De O\nman O\n\nJan B-PER\n")
    text = write(tmp_path / "plain.txt", "De man slaapt .\nJan ook .\n")
    short = write(tmp_path / "short.txt", "De man\nJan\n\n")  # no blank *between* lines: text
    jsonl = write(tmp_path / "x.jsonl.gz", gzip.compress(b'{"text": "Hola ."}\n'))
    bio = write(tmp_path / "x.bio", "Hola\n")
    assert [detect_format(p) for p in (conll, text, short, jsonl, bio)] == [
        "conll", "text", "text", "jsonl", "conll"]
    sents = list(read_unlabeled([conll, text, jsonl], lang="nl"))
    assert [(s.tokens, s.tags, s.lang) for s in sents] == [
        (["De", "man"], None, "nl"), (["Jan"], None, "nl"),
        (["De", "man", "slaapt", "."], None, "nl"), (["Jan", "ook", "."], None, "nl"),
        (["Hola", "."], None, "nl")]
    kept = list(read_unlabeled(conll, lang="nl", keep_tags=True))
    assert kept[1].tags == ["B-PER"]
    assert [s.tokens for s in read_unlabeled(conll, lang="nl", fmt="text")] == [
        ["De", "O"], ["man", "O"], ["Jan", "B-PER"]]
    with pytest.raises(ValueError, match=r"valid: \('auto', 'text', 'jsonl', 'conll'\)"):
        read_unlabeled(conll, lang="nl", fmt="csv")


# ---------------------------------------------------------------- real corpora


def _real_files(root: Path) -> list[Path]:
    files = [root / "conll2003-en" / n for n in ("train.txt", "dev.txt", "test.txt")]
    files += sorted(root.glob("conll2002-*/*.txt")) + sorted(root.glob("wikiann-*/*.txt"))
    return files + sorted(root.glob("masakhaner2/*/*.txt"))


@pytest.fixture(scope="module")
def real_counts(shared_data) -> dict[str, tuple[int, int, int, int]]:
    """Per file: (sentences, entities, rejects, bio repairs) with no length cap."""
    counts = {}
    for path in _real_files(shared_data):
        sink, stats = RejectSink(), ReadStats()
        for _ in read_conll(path, rejects=sink, stats=stats):
            pass
        counts[str(path.relative_to(shared_data))] = (
            stats.sentences, stats.entities, sink.total, stats.bio_repairs)
    return counts


def test_real_conll2003_en_train(shared_data):
    sink, stats = RejectSink(), ReadStats()
    sents = list(read_conll(shared_data / "conll2003-en" / "train.txt", rejects=sink,
                            stats=stats))
    assert len(sents) == 14_039
    assert sum(t.startswith("B-") for s in sents for t in s.tags) == 23_499 == stats.entities
    assert sink.total == 0 and stats.bio_repairs == 0
    assert sents[0].tokens[:3] == ["EU", "rejects", "German"] and sents[0].line == 1


def test_real_counts_and_zero_rejects(real_counts):
    assert len(real_counts) == 57
    assert real_counts["conll2003-en/train.txt"][:3] == (14_039, 23_499, 0)
    assert real_counts["conll2003-en/dev.txt"][0] == 3_250
    assert real_counts["conll2002-nl/train.txt"][0] == 15_806
    assert real_counts["conll2002-es/train.txt"][0] == 8_323
    assert real_counts["conll2002-es/dev.txt"][0] == 1_915
    assert real_counts["conll2002-nl/dev.txt"][0] == 2_895
    assert all(real_counts[f"wikiann-{lg}/train.txt"][0] == 20_000
               for lg in ("en", "de", "nl", "fr", "pt"))
    assert {name: c[2] for name, c in real_counts.items() if c[2]} == {}


def test_real_wikiann_lang_from_prefix(shared_data):
    sents = list(read_conll(shared_data / "wikiann-de" / "dev.txt"))
    assert {s.lang for s in sents} == {"de"}
    assert not any(t.startswith("de:") for s in sents[:200] for t in s.tokens)


def test_real_length_cap(shared_data):
    """CoNLL-2002 has a few 'sentences' of 654-1238 words: the default cap keeps them (the
    published counts include them); a cap of 512 rejects exactly those."""
    for name, kept, too_long in (("conll2002-nl", 15_803, 3), ("conll2002-es", 8_322, 1)):
        sink = RejectSink()
        assert sum(1 for _ in read_conll(shared_data / name / "train.txt", rejects=sink)) == \
            kept + too_long and sink.total == 0
        sink = RejectSink()
        n = sum(1 for _ in read_conll(shared_data / name / "train.txt", rejects=sink,
                                      max_words=512))
        assert (n, sink.total, sink.counts[TOO_LONG]) == (kept, too_long, too_long)


def test_count_records_for_progress_totals(tmp_path):
    """The fast pre-count behind the labeling bar's total: CoNLL blocks, non-blank lines."""
    import gzip

    from xner_ray.io.text import count_records, read_unlabeled
    from xner_ray.labeling.pipeline import expected_sentences
    from xner_ray.labeling.source import InputSpec

    conll = tmp_path / "a.conll"
    conll.write_text("\n\nEU B-ORG\nrejects O\n\n\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n")
    text = tmp_path / "b.txt.gz"
    with gzip.open(text, "wt") as f:
        f.write("one sentence\n\n  \nanother one\nthird\n")
    assert count_records(str(conll)) == 3 == len(list(read_unlabeled(str(conll), lang="en")))
    assert count_records(str(text), "text") == 3
    inputs = [(str(conll), InputSpec(str(conll), "en")), (str(text), InputSpec(str(text), "en", fmt="text"))]
    assert expected_sentences(inputs) == 6
    assert expected_sentences([("s3://bucket/x.txt", InputSpec("s3://bucket/x.txt", "en"))]) is None
