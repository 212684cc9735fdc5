"""Text analysis for search: tokenize, expand chat abbreviations, drop stopwords, stem (Indonesian / English).

Indonesian stems come from Sastrawi, which is slow (tens of microseconds per word), so every word is stemmed
once per process and cached. The English stemmer is a small suffix stripper of our own: no downloads.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_token_re = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*", re.UNICODE)

# Indonesian chat shorthand → standard words (applied before stemming and stopwords).
ID_ABBREVIATIONS: dict[str, str] = {
    "gmn": "bagaimana", "gmna": "bagaimana", "gimana": "bagaimana", "bgmn": "bagaimana", "gman": "bagaimana",
    "sy": "saya", "sya": "saya", "aq": "aku", "ak": "aku", "gw": "saya", "gue": "saya", "gua": "saya",
    "tdk": "tidak", "gak": "tidak", "ga": "tidak", "gk": "tidak", "nggak": "tidak", "ngga": "tidak",
    "enggak": "tidak", "engga": "tidak", "ndak": "tidak", "kagak": "tidak", "tak": "tidak", "g": "tidak",
    "yg": "yang", "sdh": "sudah", "udh": "sudah", "udah": "sudah", "dah": "sudah", "sdah": "sudah",
    "blm": "belum", "blom": "belum", "belom": "belum", "bgt": "banget", "dgn": "dengan", "dg": "dengan",
    "utk": "untuk", "buat": "untuk", "krn": "karena", "karna": "karena", "jg": "juga", "aja": "saja",
    "ajah": "saja", "tp": "tapi", "tpi": "tapi", "klo": "kalau", "kalo": "kalau", "kl": "kalau",
    "mo": "mau", "pengen": "ingin", "pgn": "ingin", "pingin": "ingin", "bs": "bisa", "bsa": "bisa",
    "gbs": "tidak bisa", "dmn": "dimana", "dmana": "dimana", "kmn": "kemana", "knp": "kenapa",
    "knapa": "kenapa", "napa": "kenapa", "brp": "berapa", "brapa": "berapa", "kpn": "kapan",
    "hr": "hari", "hrs": "harus", "jd": "jadi", "jdi": "jadi", "lg": "lagi", "lgi": "lagi",
    "trs": "terus", "trus": "terus", "sm": "sama", "ama": "sama", "dr": "dari", "dri": "dari",
    "org": "orang", "bln": "bulan", "thn": "tahun", "tgl": "tanggal", "skrg": "sekarang",
    "skrng": "sekarang", "sblm": "sebelum", "stlh": "setelah", "abis": "habis", "pd": "pada",
    "spt": "seperti", "kyk": "seperti", "kayak": "seperti", "bkn": "bukan", "msh": "masih",
    "mksh": "terima kasih", "makasih": "terima kasih", "trims": "terima kasih", "thx": "terima kasih",
    "tlg": "tolong", "mhn": "mohon", "min": "admin", "adm": "admin", "ongkir": "ongkos kirim",
    "cod": "bayar di tempat", "rekber": "rekening bersama", "tf": "transfer", "trf": "transfer",
    "sampe": "sampai", "nyampe": "sampai", "dateng": "datang", "pake": "pakai", "bikin": "buat",
    "kasih": "beri", "kirimin": "kirim", "udahan": "selesai", "duit": "uang", "hp": "ponsel", "no": "nomor", "nmr": "nomor", "wa": "whatsapp", "dok": "dokter", "dr.": "dokter",
    "bpjs": "bpjs", "jam2": "jam", "dlm": "dalam", "blh": "boleh", "ok": "oke", "okey": "oke",
}

EN_ABBREVIATIONS: dict[str, str] = {
    "pls": "please", "plz": "please", "u": "you", "ur": "your", "r": "are", "acct": "account", "pwd": "password",
    "appt": "appointment", "info": "information", "asap": "soon", "cant": "cannot", "wont": "will not",
    "thx": "thanks", "ty": "thanks", "msg": "message", "bday": "birthday", "dr": "doctor", "doc": "doctor",
}

ID_STOPWORDS = frozenset(
    ["yang", "dan", "di", "ke", "dari", "ini", "itu", "untuk", "dengan", "pada", "adalah", "atau", "juga", "saja", "sudah", "belum", "akan", "bisa", "dapat", "ada", "saya", "aku", "kami", "kita", "anda", "kamu", "dia", "mereka", "nya", "ya", "kak", "kakak", "min", "admin", "mas", "mbak", "pak", "bu", "bapak", "ibu", "gan", "sis", "apa", "apakah", "bagaimana", "gimana", "mengapa", "kenapa", "kapan", "dimana", "mana", "berapa", "siapa", "tolong", "mohon", "dong", "deh", "sih", "kok", "lah", "kah", "pun", "nih", "tuh", "nah", "loh", "kan", "mau", "ingin", "tidak", "bukan", "jangan", "tapi", "tetapi", "kalau", "jika", "karena", "agar", "supaya", "sehingga", "maka", "lagi", "masih", "sangat", "banget", "terus", "jadi", "oleh", "seperti", "sama", "para", "hal", "sebuah", "suatu", "halo", "hai", "selamat", "pagi", "siang", "sore", "malam", "permisi", "terima", "kasih", "oke", "baik", "boleh", "punya", "mengenai", "tentang", "cara", "caranya", "dalam", "atas", "bawah", "antara", "setiap", "tiap", "semua", "harus", "perlu", "bagi", "per", "nah", "hehe", "wkwk", "tanya", "nanya", "info"]
)

EN_STOPWORDS = frozenset(
    ["a", "an", "the", "and", "or", "but", "if", "then", "so", "of", "to", "in", "on", "at", "by", "for", "with", "from", "about", "into", "over", "after", "before", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "doing", "have", "has", "had", "having", "i", "me", "my", "mine", "we", "our", "us", "you", "your", "yours", "he", "him", "his", "she", "her", "it", "its", "they", "them", "their", "this", "that", "these", "those", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "please", "hi", "hello", "hey", "thanks", "thank", "there", "here", "as", "not", "no", "yes", "just", "also", "very", "too", "any", "some", "all", "each", "more", "most", "other", "such", "only", "own", "same", "than", "up", "down", "out", "off", "again", "further", "once", "get", "got", "need", "want", "know", "tell", "like", "im", "i'm", "ive", "dont", "don't", "doesn't", "isn't"]
)

GREETINGS = frozenset(
    ["halo", "hallo", "hai", "hi", "hello", "hey", "hei", "pagi", "siang", "sore", "malam", "selamat", "assalamualaikum", "salam", "permisi", "p", "ping", "test", "tes", "good", "morning", "afternoon", "evening", "min", "kak", "gan", "sis"]
)
THANKS = frozenset(["terima", "kasih", "makasih", "mksh", "trims", "thx", "thanks", "thank", "you", "tq", "ty", "oke", "ok", "sip", "siap", "mantap", "baik"])


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return text


def raw_tokens(text: str) -> list[str]:
    return _token_re.findall(normalize(text))


def _strip_repeats(tok: str) -> str:
    # "kartu2" / "lama-lama" → base word; "bgtttt" → "bgt"
    if tok.endswith("2") and len(tok) > 2 and tok[-2].isalpha():
        tok = tok[:-1]
    if "-" in tok:
        a, _, b = tok.partition("-")
        if a == b:
            tok = a
    return re.sub(r"(.)\1{2,}", r"\1", tok)


@lru_cache(maxsize=1)
def _sastrawi():  # type: ignore[no-untyped-def]
    from Sastrawi.Stemmer.StemmerFactory import StemmerFactory

    return StemmerFactory().create_stemmer()


_ID_STEMS: dict[str, str] = {}
_IN_WORDS = frozenset(
    ["kemarin", "dingin", "miskin", "mungkin", "angin", "cermin", "yakin", "ingin", "musim", "mesin", "kain", "poin", "bensin", "vaksin", "admin", "login", "koin", "latin", "kabin", "kuning", "mandarin", "izin", "ijin", "protein", "insulin", "vitamin", "cabin", "margin", "domain", "plugin", "online", "offline", "engine", "main", "bermain", "lain", "rutin", "batin", "kawin", "licin", "lilin", "mabin", "rabin", "robin", "kopin", "gratin"]
)


def stem_id(word: str) -> str:
    """Sastrawi stem, cached per process (Sastrawi itself is slow)."""
    cached = _ID_STEMS.get(word)
    if cached is not None:
        return cached
    if len(word) <= 3 or not word.isalpha():
        stem = word
    else:
        stem = _sastrawi().stem(word) or word
        # colloquial "-in" for "-kan"/"-i": batalin → batalkan, kirimin → kirimkan
        if stem == word and word.endswith("in") and len(word) > 5 and word not in _IN_WORDS:
            alt = _sastrawi().stem(word[:-2] + "kan")
            if alt and alt != word[:-2] + "kan":
                stem = alt
    if len(_ID_STEMS) < 500_000:
        _ID_STEMS[word] = stem
    return stem


_EN_EXCEPTIONS = {
    "news": "news", "series": "series", "species": "species", "cards": "card", "paid": "pay", "was": "was",
    "has": "has", "does": "do", "did": "do", "done": "do", "lost": "lose", "stolen": "steal", "sent": "send",
    "received": "receive", "children": "child", "men": "man", "women": "woman", "bus": "bus", "yes": "yes",
    "this": "this", "his": "his", "is": "is", "as": "as", "us": "us", "gas": "gas", "plus": "plus",
}
_EN_SUFFIXES = (
    ("ational", "ate"), ("tional", "tion"), ("ization", "ize"), ("isation", "ize"), ("fulness", "ful"),
    ("ousness", "ous"), ("iveness", "ive"), ("ements", "e"), ("ement", "e"), ("ments", ""), ("ment", ""),
    ("ings", ""), ("ing", ""), ("edly", ""), ("ies", "y"), ("ied", "y"), ("sses", "ss"), ("ness", ""),
    ("ably", "able"), ("ly", ""), ("ed", ""), ("es", "e"), ("s", ""),
)


@lru_cache(maxsize=200_000)
def stem_en(word: str) -> str:
    stem = _stem_en(word)
    return stem[:-1] if len(stem) > 5 and stem.endswith("ll") else stem


def _stem_en(word: str) -> str:
    """A small, deterministic English suffix stripper (Porter-like, no downloads)."""
    if word in _EN_EXCEPTIONS:
        return _EN_EXCEPTIONS[word]
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix, repl in _EN_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                continue
            base = word[: -len(suffix)] + repl
            if suffix in {"ing", "ed", "edly", "ings"}:
                if len(base) > 3 and base[-1] == base[-2] and base[-1] not in "lsz":
                    base = base[:-1]  # stopped → stop
                elif base.endswith(("at", "iz", "bl")):
                    base += "e"
            if base.endswith("e") and len(base) > 4 and suffix in {"es"}:
                base = base[:-1]
            return base
    return word


class Analyzer:
    """``analyze(text) -> list[str]`` for one language."""

    def __init__(self, language: str, *, stem: bool = True, stopwords: bool = True) -> None:
        if language not in {"id", "en"}:
            raise ValueError(f"unsupported language {language!r}: use 'id' or 'en'")
        self.language = language
        self.stem = stem
        self.stopwords = stopwords

    def expand(self, text: str) -> list[str]:
        """Tokens with chat abbreviations expanded (Indonesian shorthand is common in both languages' chats)."""
        out: list[str] = []
        for tok in raw_tokens(text):
            tok = _strip_repeats(tok)
            exp = (ID_ABBREVIATIONS if self.language == "id" else EN_ABBREVIATIONS).get(tok)
            if exp is not None:
                out.extend(exp.split())
            else:
                out.append(tok)
        return out

    def analyze(self, text: str) -> list[str]:
        words = self.expand(text)
        stops = ID_STOPWORDS if self.language == "id" else EN_STOPWORDS
        stem = stem_id if self.language == "id" else stem_en
        out: list[str] = []
        for w in words:
            if self.stopwords and w in stops:
                continue
            out.append(stem(w) if self.stem else w)
        return out


ANALYZERS = {"id": Analyzer("id"), "en": Analyzer("en")}


def analyze(text: str, language: str) -> list[str]:
    return ANALYZERS.get(language, ANALYZERS["id"]).analyze(text)


def is_small_talk(text: str) -> bool:
    """Greetings, thanks and one-word acknowledgements: not questions for the knowledge base."""
    words = [_strip_repeats(w) for w in raw_tokens(text)]
    if not words:
        return True
    return len(words) <= 4 and all(w in GREETINGS or w in THANKS or w in ID_STOPWORDS for w in words)


def is_thanks(text: str) -> bool:
    words = set(raw_tokens(text))
    return bool(words & {"terima", "makasih", "mksh", "trims", "thx", "thanks", "thank", "tq", "ty"})
