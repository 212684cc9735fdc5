"""Property-based attacks: hypothesis-generated webhook bodies never cause a 5xx; schemathesis against the OpenAPI
document finds no 5xx and only schema-valid answers.

Bounds: ``LOKET_FUZZ_EXAMPLES`` webhook bodies in all (default 10,000, the issue's figure), shared evenly by the
three webhooks (Telegram updates, Twilio WhatsApp messages, Twilio status callbacks), every one signed correctly so
that it reaches the parsing; the count actually run is asserted. A ``loket web`` runtime (webhooks persist and
answer; no router behind them) on this thread's event loop answers them over loopback HTTP. Most of the time is
hypothesis drawing examples (~3-5 ms each), so the strategies stay shallow. ``LOKET_SCHEMATHESIS_EXAMPLES``
cases per API operation (default 25).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from tests.conftest import COUNTS, make_settings
from tests.security.conftest import TELEGRAM_SECRET, TWILIO_SID, TWILIO_TOKEN, channel_env
from tests.security.live import InlineLoket, ThreadedLoket

EXAMPLES = int(os.environ.get("LOKET_FUZZ_EXAMPLES", "10000"))
API_EXAMPLES = int(os.environ.get("LOKET_SCHEMATHESIS_EXAMPLES", "25"))
PUBLIC = "https://loket.example.com"

scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=12)
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=6)
chat = st.fixed_dictionaries({"id": st.integers(-10**13, 10**13) | st.text(max_size=5),
                              "type": st.sampled_from(["private", "group", "channel", "x"])},
                             optional={"first_name": st.text(max_size=20)})
message = st.fixed_dictionaries(
    {"message_id": st.integers(-5, 10**9) | scalars, "date": st.integers(0, 2**33) | scalars,
     "chat": chat | json_values},
    optional={"text": st.text(max_size=60) | scalars, "from": json_values | chat,
              "photo": st.lists(json_values, max_size=2), "document": json_values, "contact": json_values,
              "caption": st.text(max_size=30), "entities": json_values, "sticker": json_values})
update = st.fixed_dictionaries(
    {"update_id": st.integers(-10, 2**40) | scalars},
    optional={"message": message | json_values, "edited_message": message, "callback_query": json_values,
              "my_chat_member": json_values, "channel_post": message})
telegram_bodies = update.map(json.dumps).map(str.encode) | json_values.map(json.dumps).map(str.encode) \
    | st.binary(max_size=200)
twilio_forms = st.dictionaries(
    st.sampled_from(["AccountSid", "From", "To", "Body", "MessageSid", "NumMedia", "MediaUrl0",
                     "MediaContentType0", "ProfileName", "WaId", "ButtonPayload", "MessageStatus", "ErrorCode",
                     "Latitude", "Longitude", "OriginalRepliedMessageSid"]) | st.text(max_size=8),
    st.text(max_size=40) | st.sampled_from([TWILIO_SID, "whatsapp:+6281234567890", "SM" + "a" * 32, "3", "-1",
                                            "delivered", "failed", "30008"]),
    max_size=8,
)


def test_hypothesis_webhook_bodies_never_5xx(sync_db_url: str, tmp_path: Path, record_property: Any) -> None:
    cfg = make_settings(sync_db_url, tmp_path, **channel_env(PUBLIC))
    validator = RequestValidator(TWILIO_TOKEN)
    share = {"telegram": EXAMPLES - 2 * (EXAMPLES // 3), "whatsapp": EXAMPLES // 3, "status": EXAMPLES // 3}
    statuses: dict[str, Counter[int]] = {k: Counter() for k in share}
    opts = {"deadline": None, "derandomize": True, "database": None, "suppress_health_check": list(HealthCheck)}
    with InlineLoket(cfg) as live:

        @settings(max_examples=share["telegram"], **opts)
        @given(telegram_bodies)
        def telegram(body: bytes) -> None:
            code = live.post("/webhooks/telegram", body, {"Content-Type": "application/json",
                                                          "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET})
            statuses["telegram"][code] += 1
            assert code < 500, body

        def twilio(path: str, kind: str) -> Any:
            @settings(max_examples=share[kind], **opts)
            @given(twilio_forms)
            def run(form: dict[str, str]) -> None:
                sig = validator.compute_signature(PUBLIC + path, form)
                code = live.post(path, urlencode(form).encode(), {
                    "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig})
                statuses[kind][code] += 1
                assert code < 500, (path, form)

            return run

        telegram()
        twilio("/webhooks/twilio/whatsapp", "whatsapp")()
        twilio("/webhooks/twilio/status", "status")()
    ran = {k: sum(v.values()) for k, v in statuses.items()}
    counts = (f"FUZZ webhook bodies: {sum(ran.values())} run {ran}; status codes "
              f"{ {k: dict(v) for k, v in statuses.items()} }")
    print("\n" + counts)
    record_property(COUNTS, counts)
    assert ran == share, "hypothesis ran fewer bodies than asked"
    assert statuses["telegram"][200] > 0  # some bodies were real updates, stored and answered
    assert all(statuses[k][400] > 0 for k in share)  # the bodies reached the parsing (signatures were right)


def test_schemathesis_api_no_5xx_and_schema_valid(sync_db_url: str, tmp_path: Path, record_property: Any) -> None:
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    from bot.api.auth import create_token

    cfg = make_settings(sync_db_url, tmp_path)
    with ThreadedLoket(cfg) as live:
        assert live.server is not None
        rt = live.server.rt

        async def make_token() -> str:
            async with rt.engine.begin() as conn:
                _, plain = await create_token(conn, "schemathesis", ["admin"], rt.clock.now())
            return plain

        tok = live.run(make_token())
        # the throttle must not turn the fuzzer's own calls into 429s
        rt.services["api_token_auth"].throttle.max_failures = 10**9
        with urllib.request.urlopen(live.base_url + "/api/v1/openapi.json", timeout=10) as resp:
            document = json.loads(resp.read())  # as served: the core's operations and the features'
        schema = schemathesis.openapi.from_dict(document)
        ran: dict[str, int] = {}
        operations = [result.ok() for result in schema.get_all_operations()]
        for op in operations:

            @settings(max_examples=API_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(op.as_strategy())
            def check(case: Any) -> None:
                if case.path.endswith("/tokens/{id}") and case.method == "DELETE":
                    case.path_parameters = {"id": 10**9}  # keep the fuzzer's own token alive
                case.call_and_validate(base_url=live.base_url, headers={"Authorization": f"Bearer {tok}"},
                                       checks=[not_a_server_error, response_schema_conformance,
                                               status_code_conformance])
                ran[case.operation.label] = ran.get(case.operation.label, 0) + 1

            check()
    print(f"\nSCHEMATHESIS: {sum(ran.values())} calls over {len(ran)} operations")
    record_property(COUNTS, f"SCHEMATHESIS: {sum(ran.values())} calls over {len(ran)} operations, "
                            "no 5xx, every answer schema-valid")
    assert set(ran) == {op.label for op in operations}, "every documented operation was called"
    assert any("/api/v1/appointments" in label for label in ran)
