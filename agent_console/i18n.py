"""UI strings of the console, Indonesian (default) and English; the agent's ``language`` picks one."""

from __future__ import annotations

UI: dict[str, dict[str, str]] = {
    "inbox": {"id": "Kotak masuk", "en": "Inbox"},
    "mine": {"id": "Milik saya", "en": "Mine"},
    "unassigned": {"id": "Belum ditugaskan", "en": "Unassigned"},
    "teams": {"id": "Tim saya", "en": "My teams"},
    "all": {"id": "Semua", "en": "All"},
    "dashboard": {"id": "Dasbor", "en": "Dashboard"},
    "canned": {"id": "Balasan cepat", "en": "Canned replies"},
    "admin": {"id": "Agen & tim", "en": "Agents & teams"},
    "logout": {"id": "Keluar", "en": "Log out"},
    "login": {"id": "Masuk", "en": "Log in"},
    "email": {"id": "Email", "en": "Email"},
    "password": {"id": "Kata sandi", "en": "Password"},
    "totp": {"id": "Kode autentikator (jika aktif)", "en": "Authenticator code (if enabled)"},
    "bad_login": {"id": "Email, kata sandi, atau kode salah.", "en": "Wrong email, password or code."},
    "locked": {"id": "Terlalu banyak percobaan. Coba lagi nanti.", "en": "Too many attempts. Try again later."},
    "reply": {"id": "Balas", "en": "Reply"},
    "send": {"id": "Kirim", "en": "Send"},
    "note": {"id": "Catatan internal", "en": "Private note"},
    "add_note": {"id": "Simpan catatan", "en": "Save note"},
    "assign": {"id": "Tugaskan", "en": "Assign"},
    "assign_me": {"id": "Ambil", "en": "Take it"},
    "priority": {"id": "Prioritas", "en": "Priority"},
    "labels": {"id": "Label", "en": "Labels"},
    "snooze": {"id": "Tunda", "en": "Snooze"},
    "resolve": {"id": "Selesaikan", "en": "Resolve"},
    "reopen": {"id": "Buka lagi", "en": "Reopen"},
    "handback": {"id": "Kembalikan ke bot", "en": "Hand back to the bot"},
    "status": {"id": "Status", "en": "Status"},
    "channel": {"id": "Kanal", "en": "Channel"},
    "filter": {"id": "Saring", "en": "Filter"},
    "customer": {"id": "Pelanggan", "en": "Customer"},
    "why": {"id": "Alasan dialihkan", "en": "Why the bot handed over"},
    "sla_breached": {"id": "SLA terlewati", "en": "SLA breached"},
    "sla_warning": {"id": "SLA hampir habis", "en": "SLA due soon"},
    "rejected": {"id": "Pesan tidak dapat dikirim", "en": "The message cannot be sent"},
    "templates": {"id": "Template yang tersedia", "en": "Available templates"},
    "attach": {"id": "Lampiran", "en": "Attachment"},
    "identities": {"id": "Identitas", "en": "Identities"},
    "attributes": {"id": "Atribut", "en": "Attributes"},
    "tags": {"id": "Tag", "en": "Tags"},
    "conversations": {"id": "Percakapan", "en": "Conversations"},
    "merge": {"id": "Gabungkan ke pelanggan ini", "en": "Merge into this customer"},
    "export": {"id": "Ekspor JSON", "en": "Export JSON"},
    "erase": {"id": "Hapus data (UU PDP)", "en": "Erase data (GDPR)"},
    "timeline": {"id": "Linimasa", "en": "Timeline"},
    "nothing": {"id": "Tidak ada percakapan.", "en": "No conversations."},
    "presence": {"id": "Kehadiran", "en": "Presence"},
    "forbidden": {"id": "Anda tidak punya akses ke halaman ini.", "en": "You do not have access to this page."},
    "csat": {"id": "Kepuasan (CSAT)", "en": "Satisfaction (CSAT)"},
    "save": {"id": "Simpan", "en": "Save"},
    "create": {"id": "Buat", "en": "Create"},
    "name": {"id": "Nama", "en": "Name"},
    "role": {"id": "Peran", "en": "Role"},
    "team": {"id": "Tim", "en": "Team"},
    "capacity": {"id": "Kapasitas", "en": "Capacity"},
    "typing": {"id": "sedang mengetik…", "en": "is typing…"},
}


def ui(key: str, lang: str | None) -> str:
    entry = UI.get(key)
    if entry is None:
        return key
    return entry.get(lang or "id") or entry["id"]
