"""Tables of the flow engine: every loaded flow version (so conversations keep theirs across restarts and
file edits) and the demo shop's orders (the ``order_status`` handler's local source)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from storage.models import TZ, Base, BigId


class FlowVersion(Base):
    __tablename__ = "flow_versions"
    __table_args__ = (UniqueConstraint("flow_id", "version", name="uq_flow_version"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    flow_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500))
    loaded_at: Mapped[datetime] = mapped_column(TZ)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_no: Mapped[str] = mapped_column(String(64), unique=True)
    customer_name: Mapped[str | None] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(32))  # paid | packed | shipped | delivered | cancelled | returned
    items: Mapped[list[Any]] = mapped_column(JSON, default=list)
    total: Mapped[int] = mapped_column(Integer, default=0)  # rupiah
    carrier: Mapped[str | None] = mapped_column(String(64))
    tracking_no: Mapped[str | None] = mapped_column(String(64))
    eta: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(TZ)


flow_versions = FlowVersion.__table__
orders = Order.__table__
