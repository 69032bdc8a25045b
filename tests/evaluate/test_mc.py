"""Multiple-choice scoring: acc / acc_norm on hand-built tasks, harness-style encoding, batching."""

import math

import pytest
import torch

from lmopt.data.tasks import MCItem
from lmopt.evaluate.loglik import encode_pair, loglikelihoods
from lmopt.evaluate.mc import score_items


class UniformLM(torch.nn.Module):
    """Every next token equally likely: log p(continuation) = -n_tokens * log(vocab)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()


def test_acc_and_acc_norm_on_a_hand_built_task(tiny):
    tok = tiny.tokenizer
    model = UniformLM(len(tok))
    short, long = " a", " the Python interpreter"
    n_short = len(encode_pair(tok, "Q:", short)[1])
    n_long = len(encode_pair(tok, "Q:", long)[1])
    assert n_short < n_long
    # Under a uniform model acc picks the choice with the fewest tokens; acc_norm divides by bytes,
    # picking the choice with the smallest tokens-per-byte ratio.
    items = [MCItem([("Q:", short), ("Q:", long)], 0, [short, long]),
             MCItem([("Q:", short), ("Q:", long)], 1, [short, long])]
    result = score_items(model, tok, items, batch_size=3)
    per_byte = [n_short / len(short.encode()), n_long / len(long.encode())]
    norm_pick = min(range(2), key=per_byte.__getitem__)
    assert result["acc"] == 0.5  # first item right, second wrong
    assert result["acc_norm"] == pytest.approx(sum(int(norm_pick == it.gold) for it in items) / 2)
    assert result["n"] == 2


def test_loglik_equals_unbatched_forward(tiny):
    requests = [("The quick brown", " fox"), ("Python is", " a language used widely"), ("", "hello"),
                ("x = ", "1")]
    batched = loglikelihoods(tiny.model, tiny.tokenizer, requests, batch_size=3)
    for (ctx, cont), (ll, _) in zip(requests, batched, strict=True):
        c, x = encode_pair(tiny.tokenizer, ctx, cont)
        ids = torch.tensor([c + x])
        with torch.no_grad():
            logp = torch.log_softmax(tiny.model(input_ids=ids).logits[0].double(), -1)
        expected = sum(float(logp[len(c) - 1 + i, t]) for i, t in enumerate(x))
        assert ll == pytest.approx(expected, abs=1e-3)


def test_trailing_space_moves_to_the_continuation(tiny):
    a = encode_pair(tiny.tokenizer, "Answer: ", "yes")
    b = encode_pair(tiny.tokenizer, "Answer:", " yes")
    assert a == b


def test_greedy_task_counts_exact_continuations(tiny):
    # Make the continuation the model's own greedy output, so accuracy must be 1.
    ids = tiny.tokenizer("def main():", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = tiny.model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False,
                                  pad_token_id=tiny.tokenizer.pad_token_id)
    cont = tiny.tokenizer.decode(out[0, len(ids):])
    context = tiny.tokenizer.decode(ids)
    result = score_items(tiny.model, tiny.tokenizer, [MCItem([(context, cont)], 0, [cont])], greedy=True)
    if encode_pair(tiny.tokenizer, context, cont)[1] == out[0, len(ids):].tolist():
        assert result["acc"] == 1.0
    assert math.isfinite(result["perplexity"])
