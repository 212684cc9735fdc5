"""Customer-facing texts of the flow engine (a flow's own ``error``/``timeout_text`` wins over these)."""

from __future__ import annotations

from bot.texts import register

TEXTS: dict[str, dict[str, str]] = {
    "flows.call_failed": {
        "id": "Maaf, sistem kami sedang tidak bisa memproses permintaan ini. Kami sambungkan ke petugas ya.",
        "en": "Sorry, our system cannot handle this request right now. Let us connect you to a person.",
    },
    "flows.kb_no_answer": {
        "id": "Maaf, kami belum menemukan jawabannya. Petugas kami akan membantu.",
        "en": "Sorry, we could not find an answer. One of our team will help you.",
    },
    "flows.too_many_attempts": {
        "id": "Sepertinya ada kesulitan. Tidak apa-apa, kami bantu dengan cara lain.",
        "en": "It looks like this is not working. No problem, we will help another way.",
    },
    "flows.stale_button": {
        "id": "Pilihan itu dari pesan sebelumnya dan sudah tidak berlaku. Silakan jawab pertanyaan terakhir:",
        "en": "That option belongs to an earlier message and no longer applies. Please answer the last question:",
    },
    "flows.timeout": {
        "id": "Sesi ini kami tutup karena tidak ada balasan. Ketik *menu* kapan saja untuk mulai lagi.",
        "en": "We closed this session because we did not hear back. Type *menu* any time to start again.",
    },
    "flows.invalid.generic": {"id": "Maaf, jawaban itu belum bisa kami terima.",
                              "en": "Sorry, we could not accept that answer."},
    "flows.invalid.not_an_option": {"id": "Maaf, pilihan itu tidak ada. Balas dengan nomor atau nama pilihan.",
                                    "en": "Sorry, that is not one of the options. Reply with a number or an option."},
    "flows.invalid.not_a_number": {"id": "Mohon jawab dengan angka.", "en": "Please answer with a number."},
    "flows.invalid.not_whole": {"id": "Mohon jawab dengan bilangan bulat.", "en": "Please answer with a whole number."},
    "flows.invalid.too_small": {"id": "Angkanya terlalu kecil.", "en": "That number is too small."},
    "flows.invalid.too_large": {"id": "Angkanya terlalu besar.", "en": "That number is too large."},
    "flows.invalid.not_a_phone": {"id": "Nomor telepon itu tidak valid (contoh: 0812 3456 7890).",
                                  "en": "That phone number is not valid (e.g. +62 812 3456 7890)."},
    "flows.invalid.not_an_email": {"id": "Alamat email itu tidak valid (contoh: nama@contoh.com).",
                                   "en": "That email address is not valid (e.g. name@example.com)."},
    "flows.invalid.not_a_date": {"id": "Tanggal itu tidak kami kenali (contoh: besok, 25 November).",
                                 "en": "We did not recognise that date (e.g. tomorrow, 25 November)."},
    "flows.invalid.not_a_time": {"id": "Jam itu tidak kami kenali (contoh: jam 3 sore, 15:00).",
                                 "en": "We did not recognise that time (e.g. 3pm, 15:00)."},
    "flows.invalid.bad_time": {"id": "Jam itu tidak ada (contoh: jam 3 sore, 15:00).",
                               "en": "That time does not exist (e.g. 3pm, 15:00)."},
    "flows.invalid.in_past": {"id": "Waktu itu sudah lewat. Mohon pilih waktu yang akan datang.",
                              "en": "That time has passed. Please choose a time in the future."},
    "flows.invalid.need_time": {"id": "Mohon sebutkan jamnya juga (contoh: besok jam 3 sore).",
                                "en": "Please include the time too (e.g. tomorrow 3pm)."},
    "flows.invalid.too_short": {"id": "Jawabannya terlalu pendek.", "en": "That answer is too short."},
    "flows.invalid.too_long": {"id": "Jawabannya terlalu panjang.", "en": "That answer is too long."},
    "flows.invalid.no_match": {"id": "Formatnya belum sesuai.", "en": "That is not in the expected format."},
    "flows.invalid.empty": {"id": "Jawabannya kosong.", "en": "The answer is empty."},
}

register(TEXTS)
