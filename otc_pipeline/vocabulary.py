"""OTC's own words, shared by the sample exports and the test factories.

One list of each, so that data made by `otc sample` and by the factories looks
alike to the dashboards tested against either.
"""

from __future__ import annotations

# The literal the OTC API uses for "nobody yet", leading space included (the legacy value).
PENDING_ASSIGNMENT = " PendingAssignment"

SEVERITIES = ("P1 - Critical", "P2 - High", "P3 - Medium", "P4 - Low")
SLA_HOURS = {"P1 - Critical": 4, "P2 - High": 8, "P3 - Medium": 24, "P4 - Low": 72}

ENGINEERING_TEAMS = ("Cloud - Infrastructure", "Cloud - Security", "Cloud - L3 Escalation")
TEAMS = (*ENGINEERING_TEAMS, "NOC", "Service Desk", "Network Operations")

CATEGORIES = ("Alert", "Incident", "Service Request", "Change", "Problem")
OPEN_STATUSES = ("New", "Assigned", "In Progress", "Pending Customer", "Pending Vendor", "On Hold")
CLOSED_STATUSES = ("Closed", "Incident Resolved")
PLATFORMS = ("Azure", "AWS", "VMware", "Microsoft 365", "Cisco Meraki", "Fortinet", "Veeam")
