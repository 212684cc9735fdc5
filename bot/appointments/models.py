"""Appointment tables: services, providers (with working hours), appointments and their reminders.

A reminder row exists exactly once per (appointment, stage) — the UNIQUE constraint is what makes
"exactly one message per stage" checkable in the database, not only in code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, Index, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from storage.models import TZ, Base, BigId

APPOINTMENT_STATUSES = ("booked", "confirmed", "rescheduled", "cancelled", "no_show", "done")
REMINDER_STATUSES = ("pending", "sending", "sent", "deferred", "failed", "skipped")


class AppointmentService(Base):
    """What is booked: a consultation, a check-up … with its duration and reminder policy."""

    __tablename__ = "appt_services"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    duration_minutes: Mapped[int] = mapped_column(Integer, default=30)
    reminder_stages: Mapped[list[Any] | None] = mapped_column(JSON)  # e.g. ["24h", "2h"]; None = default
    created_at: Mapped[datetime] = mapped_column(TZ)


class AppointmentProvider(Base):
    """Who or where: a doctor, a room, a branch — with a weekly schedule in its own timezone."""

    __tablename__ = "appt_providers"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    location: Mapped[str] = mapped_column(String(300), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Jakarta")
    # {"mon": [["08:00", "12:00"], ["13:00", "16:00"]], "tue": [...], ...}; missing day = closed
    working_hours: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TZ)


# Every status an appointment can have, in the order reports list them
STATUSES = ("booked", "confirmed", "rescheduled", "cancelled", "no_show", "done")


class Appointment(Base):
    __tablename__ = "appointments"
    __table_args__ = (
        Index("ix_appointments_customer", "customer_id", "start_at"),
        Index("ix_appointments_provider_start", "provider_id", "start_at"),
        Index("ix_appointments_start", "start_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), unique=True)
    customer_id: Mapped[int] = mapped_column(BigId)
    service_id: Mapped[int] = mapped_column(BigId)
    provider_id: Mapped[int] = mapped_column(BigId)
    location: Mapped[str] = mapped_column(String(300), default="")
    start_at: Mapped[datetime] = mapped_column(TZ)  # UTC
    timezone: Mapped[str] = mapped_column(String(64))  # the customer's IANA timezone
    status: Mapped[str] = mapped_column(String(16), default="booked")
    channel: Mapped[str | None] = mapped_column(String(16))  # preferred channel; None = first reachable
    language: Mapped[str] = mapped_column(String(8), default="id")
    source: Mapped[str] = mapped_column(String(16), default="import")  # import | api | flow
    escalated_at: Mapped[datetime | None] = mapped_column(TZ)  # no reply by the deadline → staff queue
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)


class Reminder(Base):
    __tablename__ = "appt_reminders"
    __table_args__ = (
        UniqueConstraint("appointment_id", "stage", name="uq_reminder_appointment_stage"),
        Index("ix_reminders_status_due", "status", "due_at"),
        Index("ix_reminders_message", "message_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    appointment_id: Mapped[int] = mapped_column(BigId)
    stage: Mapped[str] = mapped_column(String(16))
    due_at: Mapped[datetime] = mapped_column(TZ)
    status: Mapped[str] = mapped_column(String(12), default="pending")
    channel: Mapped[str | None] = mapped_column(String(16))
    conversation_id: Mapped[int | None] = mapped_column(BigId)
    message_id: Mapped[int | None] = mapped_column(BigId)
    outcome: Mapped[str | None] = mapped_column(String(40))  # confirmed | cancelled | reschedule_requested | …
    reason: Mapped[str | None] = mapped_column(Text)  # why skipped / deferred / failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    fallback: Mapped[list[Any]] = mapped_column(JSON, default=list)  # [{channel, message_id, error, at}]
    locked_by: Mapped[str | None] = mapped_column(String(120))
    locked_until: Mapped[datetime | None] = mapped_column(TZ)
    sent_at: Mapped[datetime | None] = mapped_column(TZ)
    created_at: Mapped[datetime] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)


services_t = cast(Table, AppointmentService.__table__)
providers_t = cast(Table, AppointmentProvider.__table__)
appointments_t = cast(Table, Appointment.__table__)
reminders_t = cast(Table, Reminder.__table__)
