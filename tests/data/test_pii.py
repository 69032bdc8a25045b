"""PII scrubbing: each kind found in its common forms, typed placeholders, and prose left alone."""

from __future__ import annotations

import pytest

from lmopt.data.pii import find_pii, luhn_ok, scrub_pii


@pytest.mark.parametrize("text,kind", [
    ("mail jane.doe+tag@mail.example.co.uk now", "email"),
    ("call (555) 123-4567 today", "phone"), ("call 555-123-4567", "phone"), ("tel +44 20 7946 0958", "phone"),
    ("tel +49 30 2345678", "phone"), ("ruf 0171 2345678 an", "phone"), ("appel 06 12 34 56 78", "phone"),
    ("host 192.168.10.254.", "ip"), ("v6 2001:db8::8a2e:370:7334 ok", "ip"),
    ("card 4111 1111 1111 1111 ok", "card"), ("amex 378282246310005", "card"),
    ("id AKIAIOSFODNN7EXAMPLE", "key"), ("token ghp_" + "a1B2" * 9, "key"),
    ("password: hunter22x", "key"), ("Authorization: Bearer abcdefghijklmnop1234", "key"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", "key"),
])
def test_each_kind_is_found(text, kind):
    spans = find_pii(text)
    assert [s.kind for s in spans] == [kind], (text, spans)


@pytest.mark.parametrize("text", [
    "In 2001-2005, 123 patients (p = 0.001) aged 45.6 years were enrolled.",
    "version 1.2.3.4.5, EC 3.1.1.11, ISBN 978-3-16-148410-0, NCT01234567",
    "card-like but bad checksum 4111 1111 1111 1112", "pi is 3.14159265358979323846",
    "binary 01010100 01110011 00100000 01100010", "the meeting is at 12:30:45 in room 101",
    "the key role of secret signalling", "a ratio of 1:2:3 was used",
])
def test_prose_is_left_alone(text):
    assert find_pii(text) == []


def test_luhn_against_known_numbers():
    assert all(luhn_ok(n) for n in ["4111111111111111", "5500005555555559", "378282246310005", "79927398713"])
    assert not any(luhn_ok(n) for n in ["4111111111111112", "79927398710", "1234567812345678"])


def test_scrub_typed_placeholders_and_counts():
    text, counts = scrub_pii("Write to a@b.org or 10.0.0.1; api_key=sk-abcdefghijklmnopqrstuv123")
    assert text == "Write to <EMAIL> or <IP_ADDRESS>; api_key=<KEY>"
    assert counts == {"email": 1, "ip": 1, "key": 1}
    only_mail, _ = scrub_pii("a@b.org 10.0.0.1", kinds=["email"], placeholder="[{KIND}]")
    assert only_mail == "[EMAIL] 10.0.0.1"
