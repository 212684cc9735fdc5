"""Reply parsing and classification: quoted history and signatures in the forms customers' mail clients write."""

from __future__ import annotations

import pytest

from bot.channels.email_parse import classify, html_to_text, parse_mail, provider_id, strip_reply

CASES = {
    "english_gmail": (
        "Yes, Tuesday works for me.\n\nOn Mon, 3 Jun 2024 at 10:15, Toko Contoh <support@toko.test> wrote:\n"
        "> Would Tuesday suit you?\n> \n",
        "Yes, Tuesday works for me.",
    ),
    "english_wrapped_header": (
        "Thanks!\n\nOn Mon, 3 Jun 2024 at 10:15, Toko Contoh Customer Service\n<support@toko.test> wrote:\n"
        "> old\n",
        "Thanks!",
    ),
    "indonesian": (
        "Baik, saya tunggu.\n\nPada Sen, 3 Jun 2024 pukul 10.15, Toko Contoh <support@toko.test> menulis:\n"
        "> Pesanan Anda sedang dikirim.\n",
        "Baik, saya tunggu.",
    ),
    "outlook_original_message": (
        "Please cancel it.\n\n-----Original Message-----\nFrom: Toko Contoh <support@toko.test>\n"
        "Sent: Monday, June 3, 2024 10:15 AM\nTo: Jane\nSubject: Your order\n\nYour order shipped.\n",
        "Please cancel it.",
    ),
    "outlook_from_sent_block": (
        "Tolong dibatalkan.\n\n________________________________\nFrom: Toko Contoh <support@toko.test>\n"
        "Sent: Monday, June 3, 2024 10:15\nTo: Jane\n",
        "Tolong dibatalkan.",
    ),
    "outlook_from_without_separator": (
        "See below.\n\nFrom: Toko Contoh <support@toko.test>\nSent: Monday, June 3, 2024 10:15\n"
        "Subject: RE: order\n\nold text\n",
        "See below.",
    ),
    "signature_delimiter": ("Invoice attached.\n\n-- \nJane Doe\nACME Corp\n", "Invoice attached."),
    "iphone": ("OK thanks\n\nSent from my iPhone\n\n> On 3 Jun 2024 ...\n", "OK thanks"),
    "dikirim_dari": ("Oke, terima kasih\n\nDikirim dari Yahoo Mail di Android\n", "Oke, terima kasih"),
    "interleaved_quotes": ("> Which size?\nSize M please.\n> Colour?\nBlue.\n", "Size M please.\nBlue."),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_strip_reply(name: str) -> None:
    text, expected = CASES[name]
    assert strip_reply(text) == expected


def test_gmail_html_blockquote_is_dropped() -> None:
    html = ('<div dir="ltr">Sudah saya transfer.<br></div><br><div class="gmail_quote">'
            '<div dir="ltr" class="gmail_attr">Pada Sen, 3 Jun 2024 menulis:<br></div>'
            '<blockquote class="gmail_quote">Silakan transfer ke rekening kami.</blockquote></div>')
    raw = (b"From: Budi <budi@example.test>\r\nSubject: Re: Bayar\r\nMessage-ID: <g1@example.test>\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html.encode())
    parsed = parse_mail(raw, max_attachment_bytes=1000)
    assert parsed.text == "Sudah saya transfer."
    assert "Silakan transfer" in parsed.full_text and parsed.html
    assert parsed.display_name == "Budi" and parsed.address == "budi@example.test"


def test_html_to_text_keeps_links_and_lists() -> None:
    text = html_to_text("<p>Order <a href='https://x.test/o/1'>#1</a></p><ul><li>one</li><li>two</li></ul>")
    assert "https://x.test/o/1" in text and "one" in text and "two" in text


def test_provider_id_falls_back_to_a_stable_hash() -> None:
    raw = b"From: a@example.test\r\nSubject: no id\r\n\r\nhello\r\n"
    assert provider_id(raw) == provider_id(raw) and provider_id(raw).startswith("sha256:")
    assert provider_id(b"Message-ID: <x@y>\r\n\r\nbody") == "<x@y>"
    assert parse_mail(raw, max_attachment_bytes=10).message_id == provider_id(raw)


@pytest.mark.parametrize(("headers", "sender", "kind"), [
    ({"Auto-Submitted": "auto-replied"}, "a@example.test", "auto_reply"),
    ({"Auto-Submitted": "no"}, "a@example.test", "message"),
    ({"X-Autorespond": "yes"}, "a@example.test", "auto_reply"),
    ({"Precedence": "junk"}, "a@example.test", "bulk"),
    ({"List-Id": "<l.example.test>"}, "a@example.test", "bulk"),
    ({}, "MAILER-DAEMON@example.test", "bounce"),
    ({}, "postmaster@example.test", "bounce"),
    ({"Subject": "Automatic reply: Pesanan"}, "a@example.test", "auto_reply"),
    ({"Subject": "Out of Office until Monday"}, "a@example.test", "auto_reply"),
    ({"Return-Path": "<>"}, "a@example.test", "auto_reply"),
    ({"Subject": "Re: out of stock?"}, "a@example.test", "message"),
    ({}, "a@example.test", "message"),
])
def test_classify(headers: dict[str, str], sender: str, kind: str) -> None:
    from email import message_from_bytes, policy

    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    msg = message_from_bytes(f"From: {sender}\r\n{head}\r\nhi\r\n".encode(), policy=policy.default)
    assert classify(msg, sender.lower())[0] == kind
