"""Token-level language-adversarial training (TLADV) of a teacher: AdvPicker section 3.1.

An encoder E with a linear NER head (AdvPicker Eq. 1-2) and a language discriminator over E's
token vectors (Eq. 3: two linear layers with a ReLU between them, a sigmoid giving P(source))
are trained with the three losses of Eq. 4, applied one after the other and never summed
(Algorithm 1, lines 3-13):

  NER  cross-entropy on a labeled source batch; updates E and the NER head     (``lr``, 6e-5)
  E    the discriminator's BCE against *flipped* language labels on a source and a target
       batch; updates E only                                           (``lr_encoder``, 6e-7)
  DIS  its BCE against the true language labels on another source and target batch; updates
       the discriminator only (E runs without gradients)       (``lr_discriminator``, 6e-7)

Each update owns an AdamW optimizer over exactly its parameters and gradients are cleared
before and after it, so no loss moves another's parameters (tests/test_advpicker.py checks this
parameter by parameter). Every sub-word that is not padding enters the discriminator, as in
the authors' code; there is no fixed sequence length (``max_length`` only caps sub-words).

Training runs on the shared Ray Train loop as :class:`TladvStep` (inputs tokenized once by the
loop's Ray Data stage; the loop DDP-wraps the classifier + discriminator module).

The teacher is saved as a plain Hugging Face token-classification folder (``xner evaluate``
and the labeling pipeline load it like any teacher) plus ``discriminator.safetensors`` and
``discriminator.json`` in the same folder.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from xner_ray.models.discriminator import (  # noqa: F401  (re-exported)
    DISCRIMINATOR_CONFIG, DISCRIMINATOR_VERSION, DISCRIMINATOR_WEIGHTS, SOURCE, TARGET,
    LanguageDiscriminator, has_discriminator, load_discriminator, save_discriminator,
    sentence_source_prob)
from xner_ray.train.teacher import TeacherConfig

logger = logging.getLogger(__name__)

def language_bce(logits: torch.Tensor, mask: torch.Tensor, label: float) -> torch.Tensor:
    """-(1/N) sum_i log P(Y_i = label) over the N unmasked tokens (one term of Eq. 4)."""
    m = mask.to(logits.dtype)
    target = torch.full_like(logits, float(label))
    per_token = nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float(),
                                                               reduction="none")
    return (per_token * m).sum() / m.sum().clamp(min=1)


class TladvModel(nn.Module):
    """The token classifier and the discriminator as one module, so that a DDP wrapper sees
    every forward; ``mode`` picks the part of Algorithm 1 that runs."""

    def __init__(self, ner, disc: LanguageDiscriminator):
        super().__init__()
        self.ner, self.disc = ner, disc

    def encode(self, input_ids, attention_mask) -> torch.Tensor:
        """h = E(x) (Eq. 1): the encoder's last hidden states, what the NER head reads."""
        return self.ner.base_model(input_ids=input_ids,
                                   attention_mask=attention_mask).last_hidden_state

    def forward(self, mode: str, *inputs):
        """``"ner"``: (input_ids, attention_mask, labels) -> L^NER. ``"encoder"`` / ``"dis"``:
        (ids_a, mask_a, ids_b, mask_b) -> discriminator logits of both batches; one forward
        call per update, so DDP sees one forward before each backward."""
        if mode == "ner":
            input_ids, attention_mask, labels = inputs
            return self.ner(input_ids=input_ids, attention_mask=attention_mask,
                            labels=labels).loss
        if mode not in ("encoder", "dis"):
            raise ValueError(f"unknown mode {mode!r}")
        pairs = [inputs[i:i + 2] for i in range(0, len(inputs), 2)]
        if mode == "encoder":
            return tuple(self.disc(self.encode(ids, mask)) for ids, mask in pairs)
        with torch.no_grad():  # L^DIS updates the discriminator only: no graph through E
            hs = [self.encode(ids, mask) for ids, mask in pairs]
        return tuple(self.disc(h.detach()) for h in hs)


def parameter_groups(module: TladvModel) -> dict[str, list]:
    """Trainable parameters by role: ``encoder`` (E), ``head`` (NER classifier), ``disc``.
    Frozen encoder parts (embeddings, bottom layers) are in no group."""
    encoder = [p for p in module.ner.base_model.parameters() if p.requires_grad]
    in_encoder = {id(p) for p in module.ner.base_model.parameters()}
    head = [p for p in module.ner.parameters() if p.requires_grad and id(p) not in in_encoder]
    return {"encoder": encoder, "head": head, "disc": list(module.disc.parameters())}


@dataclass
class Batch:
    """One encoded batch on the device (labels only for NER batches)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: Optional[torch.Tensor] = None

    @classmethod
    def encode(cls, tokenizer, words, device, max_length: int, tags=None,
               label2id=None) -> "Batch":
        from xner_ray.models.classifier import encode_words

        enc = encode_words(tokenizer, [list(w) for w in words],
                           None if tags is None else [list(t) for t in tags], label2id,
                           max_length=max_length)
        return cls(enc.input_ids.to(device), enc.attention_mask.to(device),
                   None if enc.labels is None else enc.labels.to(device))


class AlternatingUpdates:
    """The three updates of Algorithm 1, each with its own optimizer and schedule.

    ``model`` is the (possibly DDP-wrapped) :class:`TladvModel` that forwards go through;
    ``bare`` the unwrapped one. ``total_steps`` sizes the linear warm-up/decay schedules.
    """

    def __init__(self, model, bare: TladvModel, *, lr: float, lr_encoder: float,
                 lr_discriminator: float, weight_decay: float = 0.01, warmup_ratio: float = 0.0,
                 total_steps: int = 1, device=None):
        from transformers import get_linear_schedule_with_warmup

        self.model, self.bare = model, bare
        self.device = device or torch.device("cpu")
        self.groups = parameter_groups(bare)
        params = {"ner": self.groups["encoder"] + self.groups["head"],
                  "encoder": self.groups["encoder"], "dis": self.groups["disc"]}
        rates = {"ner": lr, "encoder": lr_encoder, "dis": lr_discriminator}
        self.params = params
        self.optims = {k: torch.optim.AdamW(params[k], lr=rates[k], weight_decay=weight_decay)
                       for k in params}
        warm = int(warmup_ratio * total_steps)
        self.scheds = {k: get_linear_schedule_with_warmup(o, warm, total_steps)
                       for k, o in self.optims.items()}

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def _apply(self, which: str, loss: torch.Tensor) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params[which], 1.0)
        self.optims[which].step()
        self.scheds[which].step()
        self.model.zero_grad(set_to_none=True)  # nothing leaks into the next update

    def ner(self, batch: Batch) -> torch.Tensor:
        """L^NER (Eq. 4, cross-entropy on gold tags): E + NER head."""
        self.model.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.model("ner", batch.input_ids, batch.attention_mask, batch.labels)
        self._apply("ner", loss)
        return loss.detach()

    def encoder(self, source: Batch, target: Batch) -> torch.Tensor:
        """L^E (Eq. 4): the discriminator's loss on *flipped* language labels, so E learns
        token vectors it cannot place; only E's optimizer steps."""
        self.model.zero_grad(set_to_none=True)
        with self._autocast():
            src, tgt = self.model("encoder", source.input_ids, source.attention_mask,
                                  target.input_ids, target.attention_mask)
        loss = (language_bce(src, source.attention_mask, TARGET)
                + language_bce(tgt, target.attention_mask, SOURCE))
        self._apply("encoder", loss)
        return loss.detach()

    def discriminator(self, source: Batch, target: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """L^DIS (Eq. 4) with the true language labels: the discriminator only. Returns the
        loss and the token accuracy of the discriminator on these batches (before the step),
        as detached device tensors (no host sync per step)."""
        self.model.zero_grad(set_to_none=True)
        with self._autocast():
            src, tgt = self.model("dis", source.input_ids, source.attention_mask,
                                  target.input_ids, target.attention_mask)
        loss = (language_bce(src, source.attention_mask, SOURCE)
                + language_bce(tgt, target.attention_mask, TARGET))
        with torch.no_grad():
            right = (((src > 0) & source.attention_mask.bool()).sum()
                     + ((tgt <= 0) & target.attention_mask.bool()).sum())
            acc = right.float() / (source.attention_mask.sum()
                                   + target.attention_mask.sum()).float()
        self._apply("dis", loss)
        return loss.detach(), acc


@dataclass(kw_only=True)
class TladvConfig(TeacherConfig):
    """TLADV teacher settings (AdvPicker 3.1 / 4.1; every field is a config key). The paper:
    lr 6e-5 (NER), 6e-7 (encoder and discriminator), discriminator hidden 500, batch 32,
    10 epochs, embeddings + bottom 3 layers frozen."""

    unlabeled: list = field(default_factory=list, metadata={
        "help": "target-language unlabeled text for the adversarial task: list of "
                "{path, lang, fmt?} (CoNLL tags in these files are ignored)"})
    n_target: Optional[int] = field(default=None, metadata={
        "help": "target sentences sampled at random across all `unlabeled` inputs; default: "
                "as many as the source train set (AdvPicker 4.1)"})
    lr: float = field(default=6e-5, metadata={"help": "AdamW rate of the NER update (L^NER)"})
    lr_encoder: float = field(default=6e-7,
                              metadata={"help": "AdamW rate of the encoder update (L^E)"})
    lr_discriminator: float = field(default=6e-7, metadata={
        "help": "AdamW rate of the discriminator update (L^DIS); the paper says 6e-7, the "
                "authors' run script uses 5e-3"})
    disc_hidden: int = field(default=500, metadata={"help": "discriminator hidden size d_d"})
    adv_batch_size: Optional[int] = field(default=None, metadata={
        "help": "sentences per language in each L^E / L^DIS batch; default: batch_size"})

    def __post_init__(self) -> None:
        super().__post_init__()
        from xner_ray.labeling.source import InputSpec

        specs = []
        for u in self.unlabeled or []:
            if isinstance(u, dict):
                unknown = sorted(set(u) - {"path", "lang", "fmt", "gold"})
                if unknown or not {"path", "lang"} <= set(u) or u.get("gold"):
                    raise ValueError(f"an unlabeled input needs path and lang (fmt optional, "
                                     f"no gold), got {u!r}")
                u = InputSpec(**u)
            if not isinstance(u, InputSpec):
                raise ValueError(f"unlabeled inputs are {{path, lang, fmt?}} mappings, got {u!r}")
            specs.append(u)
        if not specs:
            raise ValueError("TLADV needs unlabeled target text: `unlabeled: [{path, lang}]`")
        self.unlabeled = specs
        if min(self.lr_encoder, self.lr_discriminator) <= 0:
            raise ValueError("lr_encoder and lr_discriminator must be > 0")
        if self.disc_hidden < 1:
            raise ValueError(f"disc_hidden must be >= 1, got {self.disc_hidden}")
        if self.adv_batch_size is not None and self.adv_batch_size < 1:
            raise ValueError(f"adv_batch_size must be >= 1, got {self.adv_batch_size}")
        if self.n_target is not None and self.n_target < 1:
            raise ValueError(f"n_target must be >= 1, got {self.n_target}")


def sample_target(specs, n: int, seed: int) -> tuple[list[list[str]], dict[str, int], Any]:
    """A uniform random sample (reservoir, bounded memory) of ``n`` sentences over all target
    inputs together; returns (token lists, sentences per language in the sample, rejects)."""
    from xner_ray.io.text import read_unlabeled
    from xner_ray.records import RejectSink

    rng, rejects = random.Random(seed), RejectSink()
    reservoir: list[tuple[str, list[str]]] = []
    seen = 0
    for spec in specs:
        for sent in read_unlabeled(spec.path, lang=spec.lang, fmt=spec.fmt, rejects=rejects):
            seen += 1
            if len(reservoir) < n:
                reservoir.append((spec.lang, sent.tokens))
            else:
                j = rng.randrange(seen)
                if j < n:
                    reservoir[j] = (spec.lang, sent.tokens)
    if not reservoir:
        raise ValueError(f"no usable target sentences in {[s.path for s in specs]} "
                         f"({rejects.summary()})")
    per_lang: dict[str, int] = {}
    for lang, _ in reservoir:
        per_lang[lang] = per_lang.get(lang, 0) + 1
    return [t for _, t in reservoir], per_lang, rejects


def train_tladv(cfg: TladvConfig) -> Path:
    """Train one TLADV teacher on Ray Train; the best epoch (source dev F1, the zero-shot rule)
    with its discriminator ends up in ``cfg.out``. Returns that folder."""
    import ray

    from xner_ray.train.loop import fit, write_rejects
    from xner_ray.train.teacher import read_train_dev

    train, train_rej, dev, dev_rej, labels = read_train_dev(cfg)
    target, per_lang, tgt_rej = sample_target(cfg.unlabeled, cfg.n_target or len(train), cfg.seed)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_rejects(Path(cfg.out) / "rejects.jsonl", [*train_rej, *dev_rej, *tgt_rej])
    print(f"[tladv] seed {cfg.seed}: {len(train)} source sentences, target sample {per_lang}",
          flush=True)
    source_ds = ray.data.from_items([{"tokens": s.tokens, "tags": s.tags} for s in train])
    target_ds = ray.data.from_items([{"tokens": t} for t in target])
    return fit(cfg, step=TladvStep, labels=labels, dataset=source_ds, n_train=len(train),
               dev=dev, name=f"tladv-seed{cfg.seed}", extra_datasets={"target": target_ds},
               step_args=dict(lr=cfg.lr, lr_encoder=cfg.lr_encoder,
                              lr_discriminator=cfg.lr_discriminator,
                              weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio,
                              adv_batch_size=cfg.adv_batch_size or cfg.batch_size,
                              disc_hidden=cfg.disc_hidden, seed=cfg.seed),
               extra_summary={"n_target": per_lang,
                              "rejects": {"train": dict(train_rej.counts),
                                          "dev": dict(dev_rej.counts),
                                          "target": dict(tgt_rej.counts)}})


def _pool(name: str) -> dict[str, list]:
    """This worker's shard of a pre-tokenized Ray dataset, held in memory (sub-word ids and
    first sub-words only): the adversarial updates draw batches from it at random (Algorithm
    1, line 4), independently of the NER pass."""
    import ray.train

    pool: dict[str, list] = {"input_ids": [], "word_pos": []}
    for batch in ray.train.get_dataset_shard(name).iter_batches(batch_size=1024,
                                                                batch_format="numpy"):
        for k in pool:
            pool[k].extend(batch[k])
    return pool


class TladvStep:
    """Algorithm 1 as a step of the shared Ray Train loop (``train.loop.train_loop``): per
    batch of the source pass the NER, E and DIS updates in turn, each with its own optimizer
    (``AlternatingUpdates``); E/DIS batches are drawn at random from this worker's shards of
    the source and target text. Inputs arrive tokenized (``pretokenized``); losses stay on the
    device until the epoch's metrics. The loop DDP-wraps :meth:`module` (classifier +
    discriminator), scores source dev with the classifier and checkpoints through :meth:`save`
    (the discriminator beside the classifier)."""

    pretokenized = True
    # each mode leaves parts of the module unused (the head in L^E, E in L^DIS)
    ddp_kwargs = {"find_unused_parameters": True}

    @staticmethod
    def module(model, *, disc_hidden: int, **_: Any) -> TladvModel:
        return TladvModel(model, LanguageDiscriminator(model.config.hidden_size, disc_hidden))

    def __init__(self, ctx, *, lr: float, lr_encoder: float, lr_discriminator: float,
                 weight_decay: float, warmup_ratio: float, adv_batch_size: int, seed: int,
                 **_: Any):
        self.ctx, self.bare, self.seed = ctx, ctx.bare, seed
        self.rng = np.random.default_rng(seed + 7919 * ctx.rank)
        self.adv_batch_size = adv_batch_size
        self.upd = AlternatingUpdates(ctx.model, ctx.bare, lr=lr, lr_encoder=lr_encoder,
                                      lr_discriminator=lr_discriminator,
                                      weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                                      total_steps=ctx.total_steps, device=ctx.device)
        self.source, self.target = _pool("train"), _pool("target")
        if not self.source["input_ids"] or not self.target["input_ids"]:
            raise ValueError(f"worker {ctx.rank} got {len(self.source['input_ids'])} source and "
                             f"{len(self.target['input_ids'])} target sentences: fewer "
                             "sentences than training workers (set num_workers)")
        self.hist: dict[str, list] = {"ner": [], "enc": [], "dis": [], "dis_acc": []}

    def _batch(self, enc) -> Batch:
        d = self.ctx.device
        return Batch(enc.input_ids.to(d), enc.attention_mask.to(d),
                     None if enc.labels is None else enc.labels.to(d))

    def _draw(self, pool: dict) -> Batch:
        from xner_ray.train.inputs import encode_pretokenized

        n = len(pool["input_ids"])
        idx = self.rng.integers(0, n, size=min(self.adv_batch_size, n))
        return self._batch(encode_pretokenized(
            self.ctx.tokenizer, {k: [pool[k][i] for i in idx] for k in pool},
            max_length=self.ctx.max_length))

    def __call__(self, batch) -> torch.Tensor:
        from xner_ray.train.inputs import encode

        ner = self.upd.ner(self._batch(encode(self.ctx, batch,
                                              [list(t) for t in batch["tags"]])))
        self.hist["ner"].append(ner)
        self.hist["enc"].append(self.upd.encoder(self._draw(self.source),
                                                 self._draw(self.target)))
        d_loss, d_acc = self.upd.discriminator(self._draw(self.source), self._draw(self.target))
        self.hist["dis"].append(d_loss)
        self.hist["dis_acc"].append(d_acc)
        return ner

    def epoch_metrics(self) -> dict:
        """Means of this epoch's losses and discriminator accuracy (one host sync)."""
        out = {(k if k == "dis_acc" else f"{k}_loss"):
               (float(torch.stack(v).float().mean()) if v else 0.0)
               for k, v in self.hist.items()}
        self.hist = {k: [] for k in self.hist}
        return out

    def predict_dev(self, tokens) -> list[list[str]]:
        from xner_ray.evaluate import predict_tags

        return predict_tags(self.bare.ner, self.ctx.tokenizer, tokens, device=self.ctx.device)

    def save(self, folder: str, epoch: int) -> None:
        """A normal classifier folder plus the discriminator (safetensors + JSON)."""
        self.bare.ner.save_pretrained(folder, safe_serialization=True)
        self.ctx.tokenizer.save_pretrained(folder)
        save_discriminator(self.bare.disc, folder, seed=self.seed, epoch=epoch)

    def finish(self, out_dir) -> None:
        pass
