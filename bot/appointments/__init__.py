"""Appointments and reminders (DESIGN §8): intake (CSV, REST, flows), the durable reminder scheduler,
replies handled by the router, and the numbers for the dashboard. See docs/reminders.md.

``setup(rt)`` registers the router step (ORDER_APPOINTMENTS), the ``appointment.reply`` effect applier,
the REST endpoints, the flow handlers and the ``reminders`` background task (roles all and worker).
``rt.services["reminders"]`` is the scheduler, ``rt.services["appointments_policy"]`` the policy in force.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.runtime import Runtime


def setup(rt: Runtime) -> None:
    from bot.appointments import api, handlers  # noqa: F401 - handlers register themselves
    from bot.appointments.replies import appointment_step, make_applier
    from bot.appointments.scheduler import ReminderScheduler
    from bot.appointments.service import Policy
    from bot.router import ORDER_APPOINTMENTS

    policy = Policy.from_env(rt.settings.env)
    scheduler = ReminderScheduler(rt, policy)
    rt.services["appointments_policy"] = policy
    rt.services["reminders"] = scheduler
    rt.router.add("appointments", appointment_step, ORDER_APPOINTMENTS)
    rt.pipeline.appliers["appointment.reply"] = make_applier(rt, policy)
    rt.events.subscribe(scheduler.on_event)
    api.install(rt, policy)
    rt.add_task("reminders", scheduler.run, roles={"all", "worker"})
