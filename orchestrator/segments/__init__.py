"""Computed traits (a user's behaviour as features), segments over them, and audience
journeys that enter a whole segment on a schedule."""
