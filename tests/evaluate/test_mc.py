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


def brute_force(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """(sum log p(continuation tokens), every token the argmax) from one unbatched forward pass."""
    c, x = encode_pair(tokenizer, context, continuation)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([c + x])).logits[0].double(), -1)
    rows = logp[len(c) - 1: len(c) - 1 + len(x)]  # row i predicts x[i]
    return float(rows[range(len(x)), x].sum()), bool((rows.argmax(-1) == torch.tensor(x)).all())


def test_loglik_equals_unbatched_forward(tiny):
    requests = [("The quick brown", " fox"), ("Python is", " a language used widely"), ("", "hello"),
                ("x = ", "1"), ("The answer is", " is is is")]
    batched = loglikelihoods(tiny.model, tiny.tokenizer, requests, batch_size=3)
    expected = [brute_force(tiny.model, tiny.tokenizer, ctx, cont) for ctx, cont in requests]
    for (ll, greedy), (ref_ll, ref_greedy) in zip(batched, expected, strict=True):
        assert ll == pytest.approx(ref_ll, abs=1e-3)
        assert greedy == ref_greedy
    assert [g for _, g in expected] == [False, False, False, False, True]  # both flag values are exercised


def test_labels_after_one_context_share_a_forward_and_the_head_sees_only_their_positions(tiny):
    tok = tiny.tokenizer
    labels = [w for w in (" yes", " no", " maybe", " the", " a") if len(encode_pair(tok, "Q: is it?", w)[1]) == 1]
    assert len(labels) >= 2
    contexts = ["Q: is it?", "Passage: the model reads this.\nQuestion: does it?\nAnswer:"]
    requests = [(c, w) for c in contexts for w in labels] + [(contexts[0], " yes and no, in parts")]
    calls, head_rows = [], []
    hooks = [tiny.model.register_forward_pre_hook(lambda _m, args, kwargs: calls.append(1), with_kwargs=True),
             tiny.model.get_output_embeddings().register_forward_hook(
                 lambda _m, _a, out: head_rows.append(out.shape[:-1].numel()))]
    try:
        scores = loglikelihoods(tiny.model, tok, requests, batch_size=1)
    finally:
        for hook in hooks:
            hook.remove()
    expected = [brute_force(tiny.model, tok, c, x) for c, x in requests]
    for (ll, greedy), (ref_ll, ref_greedy) in zip(scores, expected, strict=True):
        assert ll == pytest.approx(ref_ll, abs=1e-3) and greedy == ref_greedy
    # one forward per context for the single-token labels, one for the long continuation
    assert len(calls) == len(contexts) + 1
    # logits only where continuation tokens are predicted: 1 row per context, n rows for the long one
    assert sum(head_rows) == len(contexts) + len(encode_pair(tok, contexts[0], " yes and no, in parts")[1])


def test_continuations_of_different_lengths_ending_one_row_share_its_forward(tiny):
    tok = tiny.tokenizer
    requests = [("The quick brown", " fox"), ("The quick", " brown fox"), ("The", " quick brown fox")]
    rows = {tuple((c + x)[:-1]) for c, x in (encode_pair(tok, *r) for r in requests)}
    assert len(rows) == 1  # the same tokens whatever the split
    calls = []
    hook = tiny.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        scores = loglikelihoods(tiny.model, tok, requests)
    finally:
        hook.remove()
    assert len(calls) == 1
    for (ll, greedy), (ref_ll, ref_greedy) in zip(scores, [brute_force(tiny.model, tok, *r) for r in requests],
                                                  strict=True):
        assert ll == pytest.approx(ref_ll, abs=1e-3) and greedy == ref_greedy


def test_a_rescaled_head_falls_back_to_the_models_logits(tiny):
    from lmopt.models.head import output_head

    assert output_head(tiny.model) is tiny.model.get_output_embeddings()
    tiny.model.config.logit_scale = 0.5  # as Cohere's forward multiplies the head's output
    try:
        assert output_head(tiny.model) is None
    finally:
        del tiny.model.config.logit_scale


def test_trailing_space_moves_to_the_continuation(tiny):
    a = encode_pair(tiny.tokenizer, "Answer: ", "yes")
    b = encode_pair(tiny.tokenizer, "Answer:", " yes")
    ctx = tiny.tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    whole = tiny.tokenizer("Answer: yes", add_special_tokens=False)["input_ids"]
    assert a == b == (ctx, whole[len(ctx):])


def test_greedy_task_counts_exact_continuations(tiny):
    tok = tiny.tokenizer
    # The model's own greedy output (by transformers' generate); this prompt's continuation
    # re-encodes to the same tokens, so the item must count as exact.
    ids = tok("The answer is", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = tiny.model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False,
                                  pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    cont = tok.decode(out)
    assert encode_pair(tok, "The answer is", cont)[1] == out
    # ":::" re-encodes as one token the model does not pick; " no" is not the greedy output.
    requests = [("The answer is", cont), ("The answer is", " no"), ("def main():", ":::")]
    items = [MCItem([req], 0, [req[1]]) for req in requests]
    result = score_items(tiny.model, tok, items, greedy=True)
    expected = [brute_force(tiny.model, tok, *req) for req in requests]
    assert [g for _, g in expected] == [True, False, False]
    assert result["acc"] == pytest.approx(1 / 3)
    assert result["perplexity"] == pytest.approx(math.exp(-sum(ll for ll, _ in expected) / 3), rel=1e-4)
    assert result["n"] == 3
