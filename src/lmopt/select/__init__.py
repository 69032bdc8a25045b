"""Choosing for the user: searching pipelines under constraints (optimize), model families (select), hardware (plan)."""
