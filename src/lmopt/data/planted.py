"""Corpora with planted problems, for measuring the filters (benchmarks) and testing them (tests).

`plant(docs, items, rng, ...)` returns rows `{"text", "id", "kind"}` and the ground truth: exact
copies (re-spaced and re-cased), lightly edited near-copies (typos, dropped and inserted words at
`edit_rate` per word), documents with inserted PII (each planted span recorded), documents with an
evaluation item pasted in, and junk that the quality rules should catch. `kind` names what was
planted; "original" rows are the untouched documents.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FIRST = ["john", "maria", "wei", "fatima", "olga", "james", "aiko", "carlos"]
LAST = ["smith", "garcia", "chen", "khan", "ivanova", "brown", "tanaka", "lopez"]
DOMAINS = ["example.com", "mail.org", "hospital.net", "uni-med.edu", "clinic.co.uk"]
TEST_CARDS = ["4111111111111111", "5500005555555559", "340000000000009", "6011000000000004",
              "4012888888881881", "5105105105105100", "378282246310005", "3530111333300000"]


def typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word + rng.choice("aeiou")
    i = rng.randrange(1, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def near_copy(text: str, rng: random.Random, edit_rate: float = 0.03) -> str:
    """A lightly edited copy: each word has `edit_rate` chance of a typo, deletion or an inserted word."""
    words, out = text.split(), []
    for w in words:
        r = rng.random()
        if r < edit_rate / 3:
            out.append(typo(w, rng))
        elif r < 2 * edit_rate / 3:
            continue
        elif r < edit_rate:
            out += [w, rng.choice(words)]
        else:
            out.append(w)
    return " ".join(out)


def exact_copy(text: str, rng: random.Random) -> str:
    """The same words with different spacing, case and trailing whitespace (a normalized-hash copy)."""
    variants = [text.upper(), text.replace(". ", ".  "), text.replace(" ", "\u00a0", 3) + "  \n", text]
    return rng.choice(variants)


def fake_pii(rng: random.Random) -> tuple[str, str]:
    """(kind, value) of one random piece of PII in a common written form."""
    kind = rng.choice(["email", "phone", "ip", "card", "key"])
    if kind == "email":
        value = f"{rng.choice(FIRST)}.{rng.choice(LAST)}{rng.randrange(100)}@{rng.choice(DOMAINS)}"
    elif kind == "phone":
        a, b, c = rng.randrange(200, 999), rng.randrange(200, 999), rng.randrange(1000, 9999)
        value = rng.choice([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"+1 {a} {b} {c}", f"+44 20 {b}{c % 10} {c}",
                            f"{a}.{b}.{c}", f"+49 30 {b}{c}", f"0{a % 100 + 100} {b}{c}",
                            f"0{a % 90 + 10} {b} {c}"])
    elif kind == "ip":
        value = ".".join(str(rng.randrange(1, 255)) for _ in range(4))
    elif kind == "card":
        digits = rng.choice(TEST_CARDS)
        value = " ".join(digits[i:i + 4] for i in range(0, len(digits), 4)) if len(digits) == 16 and \
            rng.random() < 0.5 else digits
    else:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        value = rng.choice([
            "AKIA" + "".join(rng.choice(alphabet) for _ in range(16)),
            "ghp_" + "".join(rng.choice(alphabet + "abcdefgh") for _ in range(36)),
            "sk-" + "".join(rng.choice(alphabet + "xyz") for _ in range(40))])
    return kind, value


PII_FRAMES = ["Contact {v} for details.", "Correspondence: {v}.", "Reach the author at {v}.", "(see {v})"]


def insert_pii(text: str, rng: random.Random, count: int = 2) -> tuple[str, list[tuple[str, str]]]:
    """`text` with `count` PII values inserted between sentences; returns the text and (kind, value) pairs."""
    sentences = text.split(". ")
    planted = []
    for _ in range(count):
        kind, value = fake_pii(rng)
        frame = rng.choice(PII_FRAMES) if kind != "key" else "Use the key {v} to access."
        sentences.insert(rng.randrange(len(sentences) + 1), frame.format(v=value).rstrip("."))
        planted.append((kind, value))
    return ". ".join(sentences), planted


def junk(rng: random.Random, words: list[str]) -> tuple[str, str]:
    """(rule family, text) of a document the quality rules should remove."""
    kind = rng.choice(["short", "symbols", "repeated_lines", "numbers", "boilerplate"])
    if kind == "short":
        return kind, " ".join(rng.choices(words, k=rng.randrange(3, 20)))
    if kind == "symbols":
        return kind, " ".join(f"#{w} ..." for w in rng.choices(words, k=80))
    if kind == "repeated_lines":
        line = " ".join(rng.choices(words, k=12))
        return kind, "\n".join([line] * 10 + [" ".join(rng.choices(words, k=12))])
    if kind == "numbers":
        return kind, " ".join(str(rng.randrange(10**6)) for _ in range(120)) + " the and of"
    return kind, "Lorem ipsum dolor sit amet, " + " ".join(rng.choices(words, k=80))


_STOP = ["the", "of", "and", "to", "with", "that", "in", "a", "was", "for"]
_NOUNS = [f"{a}{b}" for a in ("cell", "gene", "dose", "trial", "tumor", "group", "blood", "heart", "liver",
                              "brain", "bone", "skin", "lung", "renal", "serum", "tissue")
          for b in ("", "s", "al", "ic", "ity", "ome", "osis", "itis", "ase", "ine")]
_VERBS = ["increased", "reduced", "showed", "measured", "compared", "predicted", "improved", "caused"]


def synthetic_doc(rng: random.Random, sentences: int = 8) -> str:
    """An English-like document of 10-word sentences from 160 nouns; two such documents share few 3-grams."""
    out = []
    for _ in range(sentences):
        n, s, v = (lambda: rng.choice(_NOUNS)), (lambda: rng.choice(_STOP)), (lambda: rng.choice(_VERBS))
        words = [n(), v(), s(), n(), s(), n(), s(), n(), v(), n()]
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


@dataclass
class Planted:
    rows: list[dict] = field(default_factory=list)
    """Rows `{"text", "id", "kind", "source"}`; rows with the same `source` are copies of one document."""
    pii: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    """Row id -> the (kind, value) pairs planted in it."""


def plant(docs: list[str], items: list[str], rng: random.Random, *, exact: int = 100, near: int = 100,
          pii: int = 100, contaminated: int = 50, junk_docs: int = 50, edit_rate: float = 0.03) -> Planted:
    """Originals plus planted problems, shuffled (see the module docstring).

    Copies, PII and contamination use disjoint originals, so each row has one true label:
    copies share `source` with their original (the first of a cluster in the stream is the one to
    keep), PII goes into originals that have no copies, and contaminated rows are new documents.
    """
    out = Planted()
    order = rng.sample(range(len(docs)), exact + near + pii)
    exact_src, near_src, pii_src = order[:exact], order[exact:exact + near], set(order[exact + near:])
    rows = [{"text": d, "kind": "original", "source": i} for i, d in enumerate(docs)]
    rows += [{"text": exact_copy(docs[i], rng), "kind": "exact_copy", "source": i} for i in exact_src]
    rows += [{"text": near_copy(docs[i], rng, edit_rate), "kind": "near_copy", "source": i} for i in near_src]
    for row in rows[:len(docs)]:
        if row["source"] in pii_src:
            row["text"], planted = insert_pii(row["text"], rng, count=rng.choice([1, 2]))
            row["kind"], row["pii"] = "pii", planted
    hosts = [i for i in range(len(docs)) if i not in set(order)]
    for n, item in enumerate(rng.sample(items, contaminated)):
        host = docs[rng.choice(hosts)]
        cut = host.find(". ", len(host) // 2) + 2 or len(host)
        rows.append({"text": host[:cut] + item.strip() + " " + host[cut:], "kind": "contaminated",
                     "source": len(docs) + n})
    vocab = " ".join(docs[:50]).split()
    for n in range(junk_docs):
        family, text = junk(rng, vocab)
        rows.append({"text": text, "kind": "junk", "junk": family, "source": -1 - n})
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        row["id"] = i
        if "pii" in row:
            out.pii[i] = row.pop("pii")
    out.rows = rows
    return out
