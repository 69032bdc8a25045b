"""PII and secret scrubbing: e-mail addresses, phone numbers, IP addresses, payment cards, credentials.

`find_pii(text)` returns typed, non-overlapping spans; `scrub_pii(text)` replaces each by a typed
placeholder (`<EMAIL>`, `<PHONE>`, `<IP_ADDRESS>`, `<CARD_NUMBER>`, `<KEY>`). Card candidates must
pass the Luhn checksum and IP candidates Python's `ipaddress` parser, so numbers in prose (dates,
statistics, identifiers) are left alone. Kinds are tried in priority order: a key that contains an
'@' is a key, not an e-mail.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

PLACEHOLDERS = {"email": "EMAIL", "phone": "PHONE", "ip": "IP_ADDRESS", "card": "CARD_NUMBER", "key": "KEY"}
KIND_ORDER = ("key", "email", "card", "ip", "phone")

_KEY_PATTERNS = [
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",                       # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{36,}\b", r"\bgithub_pat_[A-Za-z0-9_]{22,}\b",  # GitHub tokens
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b",                   # Slack
    r"\bsk-[A-Za-z0-9_-]{20,}\b",                           # OpenAI-style secret keys
    r"\b[rs]k_(?:live|test)_[0-9A-Za-z]{16,}\b",            # Stripe
    r"\bAIza[0-9A-Za-z_-]{35}\b",                           # Google API key
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT
    r"\bhf_[A-Za-z0-9]{30,}\b",                             # Hugging Face token
]
# `password: hunter22`, `api_key="..."`: only the value is replaced, the name stays readable.
_ASSIGNED = re.compile(
    r"(?i)\b(?:password|passwd|pwd|passcode|secret|secret[_-]?key|api[_-]?key|apikey|access[_-]?key|"
    r"access[_-]?token|auth[_-]?token|bearer|client[_-]?secret|private[_-]?key)\b[\"']?\s*(?:[:=]|=>)\s*"
    r"[\"']?(?P<value>[^\s\"',;]{6,})")
_BEARER = re.compile(r"(?i)\bAuthorization:\s*Bearer\s+(?P<value>[A-Za-z0-9._~+/-]{16,}=*)")
_KEY = re.compile("|".join(f"(?:{p})" for p in _KEY_PATTERNS))
# Cheap literal pre-checks: most text has none of these, and the full patterns are the slow part.
_KEY_TRIGGERS = ("AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "sk-",
                 "k_live_", "k_test_", "AIza", "eyJ", "hf_", "-----BEGIN")
_ASSIGNED_TRIGGERS = ("pass", "pwd", "secret", "key", "token", "bearer", "authorization")
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                    r"\.[A-Za-z]{2,}\b")
# Cards: 13-19 digits in one run, or in the printed groups 4-4-4-4(-3) / Amex 4-6-5. Not inside a
# decimal number or a longer digit run (binary dumps, measurements).
_CARD = re.compile(r"(?<![\d.,-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{3})?"
                   r"|\d{4}([ -])\d{6}\2\d{5})(?![\d-]|[.,]\d)")
# Not inside a longer dotted number (versions, EC enzyme numbers); a sentence's full stop may follow.
_IPV4 = re.compile(r"(?<!\d)(?<!\d\.)(?<!EC )(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Phones need a telephone-like shape: an international +CC prefix, a (area) code, or 3-3-4 / 2-2-2-2-2
# groups joined by separators. Bare digit runs are left alone (they are usually identifiers or counts).
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]\d{2,8}){1,4}"    # +44 20 7946 0958
    r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}"                                            # (555) 123-4567
    r"|\d{3}([.-])\d{3}\1\d{4}"                                                # 555-123-4567, 555.123.4567
    r"|\d{3} \d{3} \d{4}"                                                       # 555 123 4567
    r"|0\d{1,4}[ -]\d{3,4}[ -]\d{3,4}"                                           # 020 7946 0958
    r"|0\d{2,4}[ /-]\d{5,8}"                                                      # 0171 2345678
    r"|0\d(?:[ .]\d{2}){4}"                                                      # 06 12 34 56 78
    r")(?!\w)")
_PHONE_DIGITS = (7, 15)


@dataclass(frozen=True, slots=True)
class Span:
    kind: str
    start: int
    end: int


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string (payment cards): doubling every second digit from the right."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _spans(kind: str, text: str) -> Iterable[tuple[int, int]]:
    if kind == "key":
        if any(t in text for t in _KEY_TRIGGERS):
            yield from (m.span() for m in _KEY.finditer(text))
        low = text.lower()
        if any(t in low for t in _ASSIGNED_TRIGGERS):
            for pattern in (_ASSIGNED, _BEARER):
                yield from (m.span("value") for m in pattern.finditer(text))
    elif kind == "email":
        yield from (m.span() for m in _EMAIL.finditer(text))
    elif kind == "card":
        for m in _CARD.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if 13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1:
                yield m.span()
    elif kind == "ip":
        v6 = _IPV6.finditer(text) if "::" in text or text.count(":") >= 7 else ()
        for m in (*_IPV4.finditer(text), *v6):
            if _is_ip(m.group()):
                yield m.span()
    elif kind == "phone":
        for m in _PHONE.finditer(text):
            if _PHONE_DIGITS[0] <= sum(c.isdigit() for c in m.group()) <= _PHONE_DIGITS[1]:
                yield m.span()


def _is_ip(candidate: str) -> bool:
    if ":" in candidate and ("::" not in candidate and candidate.count(":") < 7 or len(candidate) < 6):
        return False  # "12:30", "a:b:c" are not addresses
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def find_pii(text: str, kinds: Iterable[str] = KIND_ORDER) -> list[Span]:
    """Non-overlapping PII spans, sorted by position; earlier kinds in `KIND_ORDER` win overlaps."""
    wanted = set(kinds)
    taken: list[Span] = []
    for kind in KIND_ORDER:
        if kind not in wanted:
            continue
        for start, end in _spans(kind, text):
            if all(end <= s.start or start >= s.end for s in taken):
                taken.append(Span(kind, start, end))
    return sorted(taken, key=lambda s: s.start)


def scrub_pii(text: str, kinds: Iterable[str] = KIND_ORDER,
              placeholder: str = "<{KIND}>") -> tuple[str, dict[str, int]]:
    """Replace each PII span by its typed placeholder; return the text and the count per kind."""
    spans = find_pii(text, kinds)
    if not spans:
        return text, {}
    out, pos, counts = [], 0, {}
    for s in spans:
        out += [text[pos:s.start], placeholder.format(KIND=PLACEHOLDERS[s.kind])]
        pos = s.end
        counts[s.kind] = counts.get(s.kind, 0) + 1
    out.append(text[pos:])
    return "".join(out), counts
