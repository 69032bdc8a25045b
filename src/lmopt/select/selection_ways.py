"""How each kind of candidate adapts to the task and answers it: the `way` of a candidate.

Every way has the same four methods, which `selection_measure` times:
- `adapt()`: train on the task's training examples (nothing for zero-shot); returns its figures;
- `predict(sources)`: classify: the label of each text;
- `nll(examples)`: generate / text2text: (sum of -log p(reference tokens), reference tokens);
- `respond(source)`: one request at batch 1 (a classification, or `latency_new_tokens` generated tokens).

Encoders classify from mean-pooled, L2-normalized last hidden states (the sentence-transformers pooling
of all-MiniLM-L6-v2): with a linear probe, a multinomial logistic regression fitted by L-BFGS on the
objective of scikit-learn's LogisticRegression (C x sum of cross-entropies + ||W||^2 / 2, intercept not
penalized), or by similarity to each label's centroid. Decoders score each label word after the prompt
with `lmopt.evaluate.loglik` (zero-shot), or after LoRA tuning on prompt -> label chat rows with
`lmopt.train.finetune`, rendered with the chat template both in training and in scoring.
Encoder-decoders score the label (or reference) as the decoder's target, zero-shot or after
fine-tuning on the shared training loop (`lmopt.train.loop.train_loop`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from lmopt.evaluate.loglik import encode_pair, loglikelihoods
from lmopt.models import LoadedModel
from lmopt.select.selection_candidates import Candidate, Loaded
from lmopt.select.selection_data import Example, TaskData
from lmopt.train import TrainConfig, finetune
from lmopt.train.examples import render
from lmopt.train.loop import train_loop

IGNORE = -100


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, c: float = 1.0,
                 max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on features x (n, d) and labels y (n,): weights (k, d), bias (k,)."""
    x = x.double()
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = c * F.cross_entropy(x @ weight.T + bias, y, reduction="sum") + 0.5 * (weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach().float(), bias.detach().float()


def mean_pooled(model: Any, tokenizer: Any, texts: list[str], batch_size: int, max_length: int) -> torch.Tensor:
    """(n, hidden) mean of the last hidden states over real tokens, L2-normalized."""
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state  # (b, t, h)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(F.normalize(pooled.float(), dim=-1))
    return torch.cat(out)


class EncoderProbe:
    """A frozen encoder with a linear head (classify): way `probe` fits a logistic regression on the
    embeddings; way `similarity` takes each label's mean training embedding (renormalized) as its
    weights, so a text goes to the label whose centroid it is most cosine-similar to."""

    def __init__(self, candidate: Candidate, loaded: Loaded, data: TaskData, cfg: Any):
        self.way = candidate.way
        self.model, self.tokenizer, self.cfg = loaded.model, loaded.tokenizer, cfg
        self.labels, self.train = data.labels, data.train
        self.max_length = min(cfg.max_length, getattr(self.tokenizer, "model_max_length", cfg.max_length))
        self.head: tuple[torch.Tensor, torch.Tensor] | None = None

    def _features(self, texts: list[str]) -> torch.Tensor:
        return mean_pooled(self.model, self.tokenizer, texts, self.cfg.batch_size, self.max_length)

    def adapt(self) -> dict[str, Any]:
        x = self._features([e.source for e in self.train])
        y = torch.tensor([self.labels.index(e.target) for e in self.train])
        if self.way == "similarity":
            centroids = torch.stack([x[y == k].mean(0) for k in range(len(self.labels))])  # (labels, hidden)
            self.head = (F.normalize(centroids, dim=-1), torch.zeros(len(self.labels)))
        else:
            self.head = fit_logistic(x, y, len(self.labels), self.cfg.probe_c)
        return {"train_examples": len(self.train)}

    def predict(self, sources: list[str]) -> list[str]:
        weight, bias = self.head
        scores = self._features(sources) @ weight.T + bias
        return [self.labels[i] for i in scores.argmax(-1).tolist()]

    def respond(self, source: str) -> None:
        self.predict([source])

    def extra_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.head) if self.head else 0


class DecoderWay:
    """A causal LM: zero-shot, or LoRA-tuned on prompt -> label / response chat rows."""

    def __init__(self, candidate: Candidate, loaded: Loaded, data: TaskData, cfg: Any):
        self.model, self.tokenizer, self.cfg = loaded.model, loaded.tokenizer, cfg
        self.name, self.way, self.data = candidate.name, candidate.way, data
        self.labels = data.labels if data.task_type == "classify" else []

    def _prompt(self, source: str) -> str:
        return self.cfg.prompt_template.format(text=source) if self.data.task_type == "classify" else source

    def context(self, source: str) -> str:
        """Zero-shot classification scores after the raw prompt (as lm-evaluation-harness does); LoRA
        and generation score after the chat rendering the model was (or will be) trained on."""
        prompt = self._prompt(source)
        if self.data.task_type == "classify" and self.way == "zero-shot":
            return prompt
        return render(self.tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)

    def adapt(self) -> dict[str, Any]:
        if self.way != "lora":
            return {}
        rows = [{"prompt": self._prompt(e.source), "response": e.target} for e in self.data.train]
        config = TrainConfig(format="chat", method="lora", max_steps=self.cfg.train_steps, lr=self.cfg.lora_lr,
                             batch_size=self.cfg.train_batch_size, seq_len=self.cfg.max_length, val_fraction=0.0,
                             lora_r=self.cfg.lora_r, seed=self.cfg.seed, log_every=10**6)
        result = finetune(LoadedModel(self.model, self.tokenizer, self.name), rows, config)
        self.model = result.model.model
        return {"train_examples": len(rows), "train_steps": result.metrics["steps"]}

    def _continuation(self, context: str, text: str) -> str:
        return text if context[-1:].isspace() else " " + text

    def predict(self, sources: list[str]) -> list[str]:
        contexts = [self.context(s) for s in sources]
        requests = [(c, self._continuation(c, label)) for c in contexts for label in self.labels]
        scores = loglikelihoods(self.model, self.tokenizer, requests, self.cfg.batch_size, self.cfg.max_length)
        k = len(self.labels)
        return [self.labels[max(range(k), key=lambda j, i=i: scores[i * k + j][0])] for i in range(len(sources))]

    def nll(self, examples: list[Example]) -> tuple[float, int]:
        requests = [(c, self._continuation(c, e.target)) for e in examples for c in [self.context(e.source)]]
        scores = loglikelihoods(self.model, self.tokenizer, requests, self.cfg.batch_size, self.cfg.max_length)
        tokens = sum(len(encode_pair(self.tokenizer, c, x)[1]) for c, x in requests)
        return -sum(s for s, _ in scores), tokens

    def respond(self, source: str) -> None:
        if self.data.task_type == "classify":
            self.predict([source])
            return
        ids = self.tokenizer(self.context(source), return_tensors="pt", add_special_tokens=False)
        n = self.cfg.latency_new_tokens
        with torch.inference_mode():
            self.model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                pad_token_id=self.tokenizer.pad_token_id)

    def extra_bytes(self) -> int:
        return 0


def seq2seq_collate(items: list[tuple[int, dict]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad encoder inputs (pad id, mask) and decoder labels (-100) of (index, example) pairs."""
    examples = [ex for _, ex in items]
    width = max(len(ex["input_ids"]) for ex in examples)
    target = max(len(ex["labels"]) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), target), IGNORE, dtype=torch.long)
    for row, ex in enumerate(examples):
        ids[row, :len(ex["input_ids"])] = torch.tensor(ex["input_ids"])
        mask[row, :len(ex["input_ids"])] = 1
        labels[row, :len(ex["labels"])] = torch.tensor(ex["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def seq2seq_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


class Seq2seqWay:
    """An encoder-decoder (AutoModelForSeq2SeqLM): targets scored by the decoder, zero-shot or fine-tuned."""

    def __init__(self, candidate: Candidate, loaded: Loaded, data: TaskData, cfg: Any):
        self.model, self.tokenizer, self.cfg = loaded.model, loaded.tokenizer, cfg
        self.way, self.data = candidate.way, data
        self.labels = data.labels if data.task_type == "classify" else []

    def _source(self, source: str) -> str:
        return self.cfg.prompt_template.format(text=source) if self.data.task_type == "classify" else source

    def _example(self, e: Example) -> dict[str, list[int]]:
        src = self.tokenizer(self._source(e.source), truncation=True, max_length=self.cfg.max_length)
        tgt = self.tokenizer(text_target=e.target, truncation=True, max_length=self.cfg.max_length)
        return {"input_ids": src["input_ids"], "labels": tgt["input_ids"]}

    def adapt(self) -> dict[str, Any]:
        if self.way != "finetune":
            return {}
        train = [self._example(e) for e in self.data.train]
        config = TrainConfig(max_steps=self.cfg.train_steps, lr=self.cfg.finetune_lr, seed=self.cfg.seed,
                             batch_size=self.cfg.train_batch_size, val_fraction=0.0, log_every=10**6)
        pad = self.tokenizer.pad_token_id or 0
        for param in self.model.parameters():
            param.requires_grad_(True)
        outcome = train_loop(self.model, train, [], seq2seq_loss, config,
                             collate=functools.partial(seq2seq_collate, pad_id=pad), label="select")
        self.model = outcome.model.eval()
        return {"train_examples": len(train), "train_steps": outcome.state.step}

    def _target_nll(self, examples: list[Example]) -> list[tuple[float, int]]:
        """Per example: (sum of -log p(target tokens | source), target tokens)."""
        pad = self.tokenizer.pad_token_id or 0
        out = []
        for start in range(0, len(examples), self.cfg.batch_size):
            batch = seq2seq_collate([(0, self._example(e)) for e in examples[start:start + self.cfg.batch_size]], pad)
            with torch.inference_mode():
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    labels=batch["labels"]).logits  # (b, target, vocab)
            nll = F.cross_entropy(logits.float().transpose(1, 2), batch["labels"], ignore_index=IGNORE,
                                  reduction="none")  # (b, target)
            counts = (batch["labels"] != IGNORE).sum(1)
            out += [(float(n), int(c)) for n, c in zip(nll.sum(1), counts, strict=True)]
        return out

    def predict(self, sources: list[str]) -> list[str]:
        pairs = [Example(s, label) for s in sources for label in self.labels]
        scores = self._target_nll(pairs)
        k = len(self.labels)
        return [self.labels[min(range(k), key=lambda j, i=i: scores[i * k + j][0])] for i in range(len(sources))]

    def nll(self, examples: list[Example]) -> tuple[float, int]:
        scores = self._target_nll(examples)
        return sum(s for s, _ in scores), sum(n for _, n in scores)

    def respond(self, source: str) -> None:
        if self.data.task_type == "classify":
            self.predict([source])
            return
        enc = self.tokenizer(self._source(source), return_tensors="pt", truncation=True,
                             max_length=self.cfg.max_length)
        n = self.cfg.latency_new_tokens
        with torch.inference_mode():
            self.model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def extra_bytes(self) -> int:
        return 0


WAY_CLASSES = {"encoder": EncoderProbe, "decoder": DecoderWay, "seq2seq": Seq2seqWay}


def make_way(candidate: Candidate, loaded: Loaded, data: TaskData, cfg: Any) -> Any:
    return WAY_CLASSES[candidate.family](candidate, loaded, data, cfg)
