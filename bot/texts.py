"""Customer-facing texts in Indonesian (default) and English. Features add their own keys with ``register``."""

from __future__ import annotations

from typing import Any

LANGUAGES = ("id", "en")
DEFAULT_LANGUAGE = "id"

TEXTS: dict[str, dict[str, str]] = {
    "greeting": {
        "id": "Halo{name}! Selamat datang di {org}. Ketik pertanyaan Anda, ketik *menu* untuk pilihan, "
        "atau *0* untuk bicara dengan petugas.",
        "en": "Hello{name}! Welcome to {org}. Type your question, *menu* for options, or *0* to talk to a person.",
    },
    "noted": {
        "id": "Terima kasih, pesan Anda sudah kami catat. Mau bicara dengan petugas?",
        "en": "Thank you, we have noted your message. Would you like to talk to a person?",
    },
    "menu": {
        "id": "Apa yang bisa kami bantu?",
        "en": "How can we help?",
    },
    "choice.agent": {"id": "Bicara dengan petugas", "en": "Talk to a person"},
    "choice.menu": {"id": "Menu", "en": "Menu"},
    "queued": {
        "id": "Baik, kami sambungkan ke petugas. Mohon tunggu sebentar, pesan Anda sudah masuk antrean.",
        "en": "Sure, we are connecting you to a person. Please wait a moment; you are in the queue.",
    },
    "already_queued": {
        "id": "Anda sudah dalam antrean; petugas kami akan segera membalas.",
        "en": "You are already in the queue; an agent will reply soon.",
    },
    "opted_out": {
        "id": "Anda tidak akan menerima pesan dari kami lagi. Kirim *mulai* kapan saja untuk berlangganan kembali.",
        "en": "You will not receive messages from us any more. Send *start* at any time to subscribe again.",
    },
    "opted_in": {
        "id": "Selamat datang kembali! Anda akan menerima pesan dari kami lagi.",
        "en": "Welcome back! You will receive messages from us again.",
    },
    "unsupported": {
        "id": "Maaf, jenis pesan ini belum bisa kami proses. Silakan kirim dalam bentuk teks.",
        "en": "Sorry, we cannot handle this kind of message yet. Please send it as text.",
    },
    "fallback_error": {
        "id": "Maaf, terjadi gangguan di sistem kami. Pesan Anda sudah kami catat dan petugas akan membantu.",
        "en": "Sorry, something went wrong on our side. We have noted your message and an agent will help.",
    },
}


def register(texts: dict[str, dict[str, str]]) -> None:
    """Add a feature's texts. Each key needs both languages."""
    for key, langs in texts.items():
        missing = [lang for lang in LANGUAGES if lang not in langs]
        if missing:
            raise ValueError(f"text {key!r} lacks a translation for {', '.join(missing)}")
        TEXTS[key] = langs


def t(key: str, lang: str | None = None, **values: Any) -> str:
    lang = lang if lang in LANGUAGES else DEFAULT_LANGUAGE
    entry = TEXTS[key]
    text = entry.get(lang) or entry[DEFAULT_LANGUAGE]
    return text.format(**values) if values else text


_EN_MARKERS = {
    "hello", "hi", "hey", "please", "thanks", "thank", "you", "the", "what", "how", "where", "when", "my",
    "is", "are", "can", "want", "need", "order", "help", "appointment", "good", "morning", "i",
}
_ID_MARKERS = {
    "halo", "selamat", "tolong", "terima", "kasih", "apa", "bagaimana", "gimana", "gmn", "dimana", "kapan",
    "saya", "sy", "aku", "mau", "ingin", "bisa", "pesanan", "bantu", "jadwal", "pagi", "siang", "sore",
    "malam", "yang", "yg", "tidak", "tdk", "gak", "nggak", "dong", "ya", "kak", "min", "mas", "mbak", "pak", "bu",
}


def detect_language(text: str) -> str | None:
    """Cheap Indonesian/English guess from function words; ``None`` when the text gives no signal."""
    words = [w.strip(".,!?;:()\"'").lower() for w in text.split()]
    en = sum(w in _EN_MARKERS for w in words)
    idn = sum(w in _ID_MARKERS for w in words)
    if en == idn:
        return None
    return "en" if en > idn else "id"
