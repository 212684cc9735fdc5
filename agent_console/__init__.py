"""Agent console and escalation (issue 8): the web app at /console and the queue/SLA/CSAT logic."""
