"""Training examples for the entity alignment model, built from the parallel corpus itself.

Li et al. Sec. 4.2 trains the aligner on ``(English entity, foreign sentence) -> span``
examples made from Wikipedia anchors and a translation service, "with 25% negatives" (fake
entities absent from the sentence, so the model must read the query instead of doing NER on
segment B) and "examples of noun phrases or nominal entities". Neither resource exists here,
so the examples come from the pairs, each tagged with where it came from (``source``) so its
effect can be measured:

* ``simalign`` -- the similarity aligner's mutual-argmax word alignment (high precision) for
  name-like source spans (runs of capitalised words) and noun-phrase-ish ones (the word after
  an English determiner);
* ``identical`` -- capitalised source words whose accent-free, case-free form is (nearly) the
  same string as target words: names often survive translation (``Euphrates``/``Eufrates``);
* ``gold_links`` -- gold word links where the corpus has them (the Bible's Strong's links).

A query's target spans are all of its mentions in the target sentence (the model cannot tell
mentions apart). Name queries have their target spans trimmed to the capitalised words (the
Bible's links include prefixed words: ``Pison`` -> ``era Pisón``). Tags are BIO over the target
words with the single type ``ALN`` (Fig. 1 predicts in/out; BIO also separates two mentions).
"""

from __future__ import annotations

import collections
import difflib
import random
import unicodedata
from dataclasses import dataclass, field
from typing import Optional, Sequence

from xner_ray.labels import label_list, spans_to_tags

SOURCES = ("simalign", "identical", "gold_links")
PRIORITY = ("gold_links", "identical", "simalign")  # who wins when two give the same query
ALIGN_TYPE = "ALN"
ALIGN_LABELS = label_list([ALIGN_TYPE])  # ["O", "B-ALN", "I-ALN"]
NAME, PHRASE = "name", "phrase"
# Noun-phrase-ish queries: the word after one of these (English: the NER source language).
DETERMINERS = frozenset("the a an this that these those his her their its my our your".split())
MIN_NAME_CHARS = 3
NEAR_IDENTICAL = 0.8  # difflib ratio of accent- and case-free forms


@dataclass
class PairForExamples:
    """What the builder reads of one pair: words, gold links as word spans ``(s0, s1, t0, t1)``
    and, for ``simalign``, the aligned word pairs ``{(src, tgt)}``."""

    pair_id: str
    src_tokens: list[str]
    tgt_tokens: list[str]
    links: Sequence[tuple[int, int, int, int]] = ()
    alignment: Optional[set] = None


@dataclass
class AlignmentExample:
    pair_id: str
    query: list[str]
    tokens: list[str]
    tags: list[str]
    source: str
    kind: str
    negative: bool = False


@dataclass
class _Candidate:
    query: tuple[str, ...]
    spans: list[tuple[int, int]]
    source: str
    kind: str = field(default=PHRASE)

    @property
    def key(self) -> str:
        return " ".join(self.query).casefold()


def fold(word: str) -> str:
    """Accent-free, case-free form: ``Gihón`` -> ``gihon``."""
    decomposed = unicodedata.normalize("NFKD", word)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def is_name_word(word: str) -> bool:
    letters = sum(ch.isalpha() for ch in word)
    return (letters >= MIN_NAME_CHARS and word[0].isupper()
            and all(ch.isalpha() or ch in "-'’" for ch in word))


def near_identical(a: str, b: str) -> bool:
    fa, fb = fold(a), fold(b)
    return fa == fb or difflib.SequenceMatcher(None, fa, fb).ratio() >= NEAR_IDENTICAL


def kind_of(query: Sequence[str]) -> str:
    return NAME if all(w[:1].isupper() for w in query) else PHRASE


def trim_to_names(tokens: Sequence[str], span: tuple[int, int], query: Sequence[str] = ()
                  ) -> tuple[int, int]:
    """Shrink a name's target span to the words that look like the name: those near-identical
    to a query word if any, else the capitalised ones -- a sentence-initial capital (``Y
    Mizraim``) only when no other word is capitalised; unchanged when nothing qualifies."""
    words = range(*span)
    keep = [i for i in words if any(near_identical(q, tokens[i]) for q in query
                                    if len(q) >= MIN_NAME_CHARS)]
    if not keep:
        caps = [i for i in words if tokens[i][:1].isupper()]
        keep = [i for i in caps if i > 0] or caps
    return (keep[0], keep[-1] + 1) if keep else span


def merge_spans(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping spans of one query become one (adjacent ones stay two mentions)."""
    out: list[list[int]] = []
    for a, b in sorted(set(spans)):
        if out and a < out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _finish(query: Sequence[str], spans: list[tuple[int, int]], tgt: Sequence[str],
            source: str) -> _Candidate:
    kind = kind_of(query)
    if kind == NAME:
        spans = [trim_to_names(tgt, s, query) for s in spans]
    return _Candidate(tuple(query), merge_spans(spans), source, kind)


def gold_link_candidates(pair: PairForExamples) -> list[_Candidate]:
    """One query per distinct linked source string; its spans: every target span linked to it."""
    by_query: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    for s0, s1, t0, t1 in pair.links:
        query = tuple(pair.src_tokens[s0:s1])
        if any(_is_word(w) for w in query):
            by_query.setdefault(query, []).append((t0, t1))
    return [_finish(q, spans, pair.tgt_tokens, "gold_links") for q, spans in by_query.items()]


def _is_word(token: str) -> bool:
    return any(ch.isalnum() for ch in token)


def identical_candidates(pair: PairForExamples) -> list[_Candidate]:
    """Capitalised source words with near-identical capitalised target words; a target word
    claimed by two different source strings is ambiguous and dropped; adjacent matches of
    adjacent single words join into one multi-word query."""
    src, tgt = pair.src_tokens, pair.tgt_tokens
    names = [j for j, t in enumerate(tgt) if is_name_word(t)]
    matches: dict[str, set[int]] = {}
    first: dict[str, int] = {}
    for i, w in enumerate(src):
        if is_name_word(w):
            found = {j for j in names if near_identical(w, tgt[j])}
            if found:
                matches.setdefault(w, set()).update(found)
                first.setdefault(w, i)
    claimed = collections.Counter(j for found in matches.values() for j in found)
    matches = {w: f for w, f in matches.items() if all(claimed[j] == 1 for j in f)}
    out, used = [], set()
    for w in sorted(matches, key=first.get):
        if w in used:
            continue
        i, query = first[w], [w]
        spans = [(j, j + 1) for j in sorted(matches[w])]
        nxt = src[i + 1] if i + 1 < len(src) else None
        if (nxt in matches and nxt not in used and len(matches[w]) == 1
                and matches[nxt] == {spans[0][0] + 1} and src.count(w) == 1):
            query, spans = [w, nxt], [(spans[0][0], spans[0][0] + 2)]
            used.add(nxt)
        used.add(w)
        out.append(_Candidate(tuple(query), spans, "identical", NAME))
    return out


def _query_spans(src: Sequence[str]) -> list[tuple[int, int]]:
    """Name runs (capitalised words, without the sentence-initial word: its capital says
    nothing, ``And Adam`` -> ``Adam``) and the word after a determiner (noun-phrase-ish)."""
    spans, i = [], 0
    while i < len(src):
        if is_name_word(src[i]):
            j = i
            while j < len(src) and is_name_word(src[j]):
                j += 1
            if max(i, 1) < j:
                spans.append((max(i, 1), j))
            i = j
            continue
        if (src[i].casefold() in DETERMINERS and i + 1 < len(src)
                and src[i + 1].isalpha() and src[i + 1].islower()
                and len(src[i + 1]) >= MIN_NAME_CHARS and src[i + 1] not in DETERMINERS):
            spans.append((i + 1, i + 2))
        i += 1
    return spans


def simalign_candidates(pair: PairForExamples) -> list[_Candidate]:
    """Queries whose aligned target words form exactly one contiguous span."""
    from xner_ray.methods.projection.aligner import spans_from_words

    if pair.alignment is None:
        return []
    out = []
    for s0, s1 in _query_spans(pair.src_tokens):
        words = sorted({j for i, j in pair.alignment if s0 <= i < s1})
        spans = spans_from_words(words, pair.tgt_tokens, max_gap=0)
        if len(spans) == 1 and spans[0][1] - spans[0][0] <= 2 * (s1 - s0) + 1:
            out.append(_finish(pair.src_tokens[s0:s1], spans, pair.tgt_tokens, "simalign"))
    return out


BUILDERS = {"gold_links": gold_link_candidates, "identical": identical_candidates,
            "simalign": simalign_candidates}


def pair_candidates(pair: PairForExamples, sources: Sequence[str], stats: collections.Counter
                    ) -> list[_Candidate]:
    """The pair's positives, one per query (the first source in PRIORITY order wins)."""
    best: dict[str, _Candidate] = {}
    for source in PRIORITY:
        if source not in sources:
            continue
        for cand in BUILDERS[source](pair):
            if cand.key in best:
                stats[f"duplicate_query:{source}"] += 1
            else:
                best[cand.key] = cand
    return list(best.values())


def _absent(query: Sequence[str], pair: PairForExamples) -> bool:
    """A negative query must not occur in the pair: neither in its source sentence (then its
    translation would likely be in the target) nor near-identically among the target words."""
    q = [w.casefold() for w in query]
    src = [w.casefold() for w in pair.src_tokens]
    if any(src[i:i + len(q)] == q for i in range(len(src) - len(q) + 1)):
        return False
    return not any(near_identical(w, t) for w in query if len(w) >= MIN_NAME_CHARS
                   for t in pair.tgt_tokens if len(t) >= MIN_NAME_CHARS)


def check_options(sources: Sequence[str], negative_ratio: float, max_per_pair: int) -> None:
    bad = sorted(set(sources) - set(SOURCES))
    if bad or not sources:
        raise ValueError(f"unknown example sources {bad or '(none given)'}; valid: {list(SOURCES)}")
    if not 0.0 <= negative_ratio < 1.0:
        raise ValueError(f"negative_ratio must be in [0, 1), got {negative_ratio}")
    if max_per_pair < 1:
        raise ValueError(f"max_per_pair must be >= 1, got {max_per_pair}")


def build_examples(pairs: Sequence[PairForExamples], *, sources: Sequence[str] = SOURCES,
                   negative_ratio: float = 0.25, max_per_pair: int = 4, seed: int = 0
                   ) -> tuple[list[AlignmentExample], collections.Counter]:
    """Positives from ``sources`` (at most ``max_per_pair`` per pair, names first) and
    negatives making up ``negative_ratio`` of all examples (Li et al. Sec. 4.2: 25%): queries
    of *other* pairs that are absent from this one, with all-``O`` tags. Returns the examples
    and counters (positives/negatives per source and kind, what was dropped and why)."""
    check_options(sources, negative_ratio, max_per_pair)
    rng, stats = random.Random(seed), collections.Counter()
    examples, pool = [], []
    for index, pair in enumerate(pairs):
        cands = pair_candidates(pair, sources, stats)
        rng.shuffle(cands)
        cands.sort(key=lambda c: c.kind != NAME)  # stable: names first, shuffled within kind
        stats["capped"] += max(0, len(cands) - max_per_pair)
        for c in cands[:max_per_pair]:
            tags = spans_to_tags([(a, b, ALIGN_TYPE) for a, b in c.spans], len(pair.tgt_tokens))
            examples.append(AlignmentExample(pair.pair_id, list(c.query), list(pair.tgt_tokens),
                                             tags, c.source, c.kind))
            stats[f"positive:{c.source}:{c.kind}"] += 1
            pool.append((index, c))
    examples += _negatives(pairs, pool, len(examples), negative_ratio, rng, stats)
    rng.shuffle(examples)  # a caller that keeps only the first N keeps the negative share
    return examples, stats


def _negatives(pairs: Sequence[PairForExamples], pool: list, n_pos: int, ratio: float,
               rng: random.Random, stats: collections.Counter) -> list[AlignmentExample]:
    want = round(n_pos * ratio / (1.0 - ratio)) if ratio else 0
    out = []
    for _ in range(want):
        for _attempt in range(20):
            if len(pairs) < 2 or not pool:
                break
            target = rng.randrange(len(pairs))
            origin, cand = pool[rng.randrange(len(pool))]
            if origin != target and _absent(cand.query, pairs[target]):
                pair = pairs[target]
                out.append(AlignmentExample(pair.pair_id, list(cand.query),
                                            list(pair.tgt_tokens), ["O"] * len(pair.tgt_tokens),
                                            cand.source, cand.kind, negative=True))
                stats[f"negative:{cand.source}:{cand.kind}"] += 1
                break
        else:
            stats["negative_not_found"] += 1
    stats["negative_short"] += want - len(out)
    return out
