"""Personas: the model, loaders (our Parquet schema, the reference JSONL format), seeds, pairing."""

from aloe_ray.personas.model import Persona, persona_id, text_id

__all__ = ["Persona", "persona_id", "text_id"]
