"""Indonesian/English analysis: chat abbreviations, stemming, stopwords, small talk."""

from __future__ import annotations

from knowledge_base.analyzer import analyze, is_small_talk, stem_en, stem_id


def test_indonesian_abbreviations_are_expanded_before_stemming() -> None:
    assert analyze("gmn cara sy bayar pesanan yg blm dikirim", "id") == ["bayar", "pesan", "kirim"]
    # "tdk"/"gak" become "tidak" (a stopword), "utk" → "untuk", "dgn" → "dengan"
    assert analyze("kartu tdk bisa dipakai utk belanja dgn diskon", "id") == ["kartu", "pakai", "belanja", "diskon"]
    assert analyze("ongkir ke medan", "id") == ["ongkos", "kirim", "medan"]


def test_indonesian_stemming_joins_word_forms() -> None:
    assert stem_id("membatalkan") == stem_id("pembatalan") == "batal"
    assert stem_id("pengiriman") == "kirim"
    assert analyze("Pemeriksaan", "id") == analyze("periksa", "id")


def test_english_stemmer_and_stopwords() -> None:
    assert stem_en("cancelled") == stem_en("cancelling") == stem_en("cancels") == "cancel"
    assert stem_en("deliveries") == "delivery"
    assert analyze("How do I cancel my appointments?", "en") == ["cancel", "appoint"]


def test_small_talk_is_not_a_question() -> None:
    assert is_small_talk("halo kak")
    assert is_small_talk("terima kasih!")
    assert is_small_talk("Good morning")
    assert not is_small_talk("jam buka klinik")
    assert not is_small_talk("where is my order")
