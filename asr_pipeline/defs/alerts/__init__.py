"""Alerts and freshness: the loop reports its own trouble (README, "Daily life")."""
