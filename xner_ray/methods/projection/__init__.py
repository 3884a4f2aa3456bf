"""Entity projection on parallel corpora (Li et al., "Cross-Lingual NER Using Parallel Corpus: A
New Approach Using XLM-RoBERTa Alignment").

English NER on the source side, an entity aligner that finds each source entity in the target
sentence, the Sec. 4.3 filters, and the projected target sentences in the store's
``projections`` table. Modules: ``corpus`` (parallel inputs and gold links), ``aligner``
(training-free similarity aligner, SimAlign-style), ``examples`` (alignment training examples),
``model`` (the query [SEP] target alignment model), ``filters`` (Sec. 4.3), ``stages`` (plain
batch callables), ``pipeline`` (their Ray Data wiring and the store).
"""
