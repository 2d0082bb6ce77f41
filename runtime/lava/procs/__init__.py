"""Lava Process and ProcessModel classes of Augury (this package holds nothing else)."""
